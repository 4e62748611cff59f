%% Hostile and unusual input to the servers and the HTTP listener: unknown
%% messages, a crashing or blocking handler, odd requests, a Q-table path
%% that is a directory or cannot be written, a full waiting line, and the
%% API of a stopped application.
-module(erlmcp_flow_robustness_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0, raw_agent/1, with_env/2]).

%% Every server answers an unknown call with an error and shrugs off unknown
%% casts and messages, and keeps serving.
unknown_messages_test() ->
    Dir = tmp_dir(),
    with_env([{metrics, #{http => true, port => 0}},
              {export, #{file => filename:join(Dir, "spans.jsonl"), interval_ms => 3600000}}],
             fun() ->
                     Swarm = start_swarm(),
                     Servers = [erlmcp_flow_registry, erlmcp_flow_bulkhead, erlmcp_flow_q_learning,
                                erlmcp_flow_metrics, erlmcp_flow_span_exporter,
                                erlmcp_flow_metrics_http, erlmcp_flow_cluster,
                                erlmcp_flow_failure_detector, erlmcp_flow_byzantine_detector,
                                erlmcp_flow_vote_service, erlmcp_flow_mcp, Swarm],
                     [begin
                          Pid = resolve(S),
                          ?assertEqual({error, unknown_call}, gen_server:call(Pid, {nonsense, 42})),
                          gen_server:cast(Pid, {nonsense, 42}),
                          Pid ! {nonsense, 42},
                          _ = sys:get_state(Pid),
                          ?assert(is_process_alive(Pid))
                      end || S <- Servers],
                     %% a connection process too
                     Port = erlmcp_flow_metrics_http:port(),
                     {ok, Sock} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
                     Conn = wait_for_conn(),
                     ?assertEqual({error, unknown_call}, gen_server:call(Conn, nonsense)),
                     gen_server:cast(Conn, nonsense),
                     Conn ! nonsense,
                     ok = gen_tcp:send(Sock, <<"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n">>),
                     {ok, <<"HTTP/1.1 200", _/binary>>} = gen_tcp:recv(Sock, 0, 2000),
                     gen_tcp:close(Sock),
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     ?assertMatch({ok, _, _}, erlmcp_flow:execute(#{}, #{})),
                     erlmcp_flow_test_util:unregister_all(),
                     unlink(Swarm),
                     exit(Swarm, shutdown)
             end).

resolve(Name) when is_atom(Name) -> whereis(Name);
resolve(Pid) -> Pid.

start_swarm() ->
    {ok, Swarm} = erlmcp_flow_swarm:start_link(<<"swarm">>, [<<"s">>], [echo_agent()]),
    Swarm.

wait_for_conn() ->
    [Sup] = [P || {conns, P, supervisor, _} <- supervisor:which_children(erlmcp_flow_metrics_http_sup)],
    erlmcp_flow_test_util:wait_until(fun() -> supervisor:which_children(Sup) =/= [] end),
    [{_, Conn, _, _}] = supervisor:which_children(Sup),
    Conn.

%% The listener with a test handler: a crash is a 500 and the listener
%% serves on; with every connection busy a new one is turned away (503);
%% HTTP/1.0 closes, absolute URIs and odd lengths are understood.
http_edges_test_() -> {timeout, 30, fun http_edges/0}.

http_edges() ->
    persistent_term:put({erlmcp_flow_test_http_handler, test}, self()),
    process_flag(trap_exit, true),
    {ok, Sup} = erlmcp_flow_http:start_link(
                  #{name => edge_http, tag => edge_http, ip => loopback, port => 0,
                    handler => erlmcp_flow_test_http_handler,
                    limits => #{max_connections => 1, request_timeout_ms => 5000,
                                idle_timeout_ms => 5000}}),
    try
        Port = erlmcp_flow_http:port(edge_http),
        ?assertMatch({500, _}, request(Port, <<"GET /crash HTTP/1.1\r\nHost: x\r\n\r\n">>)),
        ?assertMatch({200, <<"'GET' /abs ", _/binary>>},
                     request(Port, <<"GET http://host/abs?q=1 HTTP/1.1\r\nHost: host\r\n\r\n">>)),
        ?assertMatch({200, <<"'POST' /b abc">>},
                     request(Port, <<"POST /b HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc">>)),
        ?assertMatch({400, _}, request(Port, <<"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n">>)),
        %% a body in two pieces
        {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
        ok = gen_tcp:send(S, <<"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc">>),
        receive after 20 -> ok end,
        ok = gen_tcp:send(S, <<"def">>),
        {ok, Answer} = gen_tcp:recv(S, 0, 2000),
        ?assertMatch({match, _}, re:run(Answer, <<"/two abcdef">>)),
        gen_tcp:close(S),
        %% the one connection allowed is busy answering: the next is turned away
        {ok, B} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
        ok = gen_tcp:send(B, <<"GET /block HTTP/1.1\r\nHost: x\r\n\r\n">>),
        Blocked = receive {blocked, P} -> P after 2000 -> error(not_blocked) end,
        ?assertMatch({503, _}, request(Port, <<"GET /x HTTP/1.1\r\nHost: x\r\n\r\n">>)),
        Blocked ! release,
        {ok, <<"HTTP/1.1 200", _/binary>>} = gen_tcp:recv(B, 0, 2000),
        gen_tcp:close(B),
        ?assertEqual(undefined, erlmcp_flow_http:port(no_such_listener))
    after
        exit(Sup, shutdown),
        receive {'EXIT', Sup, _} -> ok after 5000 -> ok end,
        process_flag(trap_exit, false),
        persistent_term:erase({erlmcp_flow_test_http_handler, test})
    end.

request(Port, Bytes) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
    ok = gen_tcp:send(S, Bytes),
    {ok, Reply} = recv_all(S, <<>>),
    gen_tcp:close(S),
    [Head, Body] = binary:split(Reply, <<"\r\n\r\n">>),
    [<<"HTTP/1.1 ", Code:3/binary, _/binary>> | _] = binary:split(Head, <<"\r\n">>),
    {binary_to_integer(Code), Body}.

recv_all(S, Acc) ->
    case gen_tcp:recv(S, 0, 2000) of
        {ok, Data} ->
            case binary:split(<<Acc/binary, Data/binary>>, <<"\r\n\r\n">>) of
                [Head, Body] ->
                    {match, [L]} = case re:run(Head, <<"content-length: (\\d+)">>,
                                               [{capture, all_but_first, binary}]) of
                                       nomatch -> {match, [<<"0">>]};
                                       M -> M
                                   end,
                    case byte_size(Body) >= binary_to_integer(L) of
                        true -> {ok, <<Acc/binary, Data/binary>>};
                        false -> recv_all(S, <<Acc/binary, Data/binary>>)
                    end;
                _ ->
                    recv_all(S, <<Acc/binary, Data/binary>>)
            end;
        {error, closed} ->
            {ok, Acc}
    end.

%% A model path that is a directory is left where it is; saving is off. A
%% model path that cannot be written is reported by save/0.
q_table_paths_test() ->
    Dir = tmp_dir(),
    with_env([{q_learning, #{model_path => Dir}}],
             fun() ->
                     ?assertEqual({error, no_model_path}, erlmcp_flow_q_learning:save()),
                     ?assert(filelib:is_dir(Dir))
             end),
    ?assertEqual([], filelib:wildcard(Dir ++ ".bad-*")),
    %% a path whose temporary file is a link: readable, not writable
    Linked = filename:join(Dir, "linked.model"),
    ok = file:make_symlink("/etc/hostname", Linked ++ ".tmp"),
    with_env([{q_learning, #{model_path => Linked}}],
             fun() ->
                     ?assertMatch({error, {not_regular, _}}, erlmcp_flow_q_learning:save())
             end),
    ?assertNot(filelib:is_file(Linked)),
    %% a path that cannot even be read (under a regular file): not saving
    File = filename:join(Dir, "file"),
    ok = file:write_file(File, <<>>),
    with_env([{q_learning, #{model_path => filename:join(File, "q.model")}}],
             fun() ->
                     ?assertEqual({error, no_model_path}, erlmcp_flow_q_learning:save())
             end),
    %% saved every save_interval episodes, checked every second
    Path = filename:join(Dir, "periodic.model"),
    with_env([{q_learning, #{model_path => Path, save_interval => 5}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 10)],
                     erlmcp_flow_test_util:wait_until(fun() -> filelib:is_regular(Path) end,
                                                      3000),
                     erlmcp_flow_test_util:unregister_all()
             end).

%% A full waiting line answers at once.
full_line_test() ->
    with_env([{circuit_breaker, #{max_concurrent => 1, max_waiting => 0}}],
             fun() ->
                     Quiet = raw_agent(fun(_) -> noreply end),
                     ok = erlmcp_flow:register_agent(<<"q">>, Quiet, [<<"x">>]),
                     Self = self(),
                     spawn_link(fun() ->
                                        R = erlmcp_flow:execute(#{}, #{timeout => 200,
                                                                       idempotent => false}),
                                        Self ! {first, R}
                                end),
                     erlmcp_flow_test_util:wait_until(
                       fun() -> erlmcp_flow:get_agent_load(<<"q">>) =:= 1 end),
                     ?assertEqual({error, overloaded}, erlmcp_flow:execute(#{}, #{})),
                     receive {first, R} -> ?assertEqual({error, execution_timeout}, R) end,
                     erlmcp_flow_test_util:unregister_all()
             end).

%% The API of an application that is not running answers; nothing raises.
not_running_test() ->
    _ = application:stop(erlmcp_flow),
    ?assertEqual({error, not_started}, erlmcp_flow:stats()),
    ?assertEqual([], erlmcp_flow_prometheus:render()),
    ?assertEqual(0, erlmcp_flow_bulkhead:waiting()),
    ?assertEqual(ok, erlmcp_flow_bulkhead:released()),
    ?assertEqual(undefined, erlmcp_flow_metrics_http:port()).

%% Limits and odd keys of requirements.
requirements_test() ->
    Apps = erlmcp_flow_test_util:start(),
    try
        ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
        ?assertEqual({error, {badarg, {task_class, too_long}}},
                     erlmcp_flow:execute(#{}, #{task_class => binary:copy(<<"c">>, 65537)})),
        %% capabilities bounded as a registration's: execute, explain and
        %% JSON-RPC say so rather than "no agent"
        Long = #{capabilities => [binary:copy(<<"c">>, 1025)]},
        Many = #{capabilities => [integer_to_binary(I) || I <- lists:seq(1, 1025)]},
        ?assertEqual({error, {badarg, {capability, too_long}}}, erlmcp_flow:execute(#{}, Long)),
        ?assertEqual({error, {badarg, {capabilities, too_many}}}, erlmcp_flow:execute(#{}, Many)),
        ?assertEqual({error, {badarg, {capability, too_long}}}, erlmcp_flow:explain(Long)),
        ?assertEqual({error, {badarg, {capabilities, too_many}}}, erlmcp_flow:explain(Many)),
        %% at the limits: 1 024 capabilities of 1 024 bytes, held and asked for
        Edge = [<<(binary:copy(<<"e">>, 1020))/binary, I:32>> || I <- lists:seq(1, 1024)],
        ok = erlmcp_flow:register_agent(<<"edge">>, echo_agent(), Edge),
        ?assertMatch({ok, _, #{agent_id := <<"edge">>}}, erlmcp_flow:execute(#{}, #{capabilities => Edge})),
        ?assertMatch({error, -32602, _, _},
                     erlmcp_flow_rpc:handle(<<"flow.route_task">>,
                                            #{<<"task">> => #{}, <<"requirements">> =>
                                                  #{<<"capabilities">> => [binary:copy(<<"c">>, 1025)]}},
                                            #{transport => http})),
        %% a binary task id is the sticky key as it is
        {ok, _, #{agent_id := <<"a">>}} =
            erlmcp_flow:execute(#{id => <<"k1">>}, #{strategy => consistent_hash}),
        %% a long type and id are cut in the span's summary
        {ok, _, #{trace_id := T}} =
            erlmcp_flow:execute(#{type => binary:copy(<<"t">>, 200), id => binary:copy(<<"i">>, 200)},
                                #{}),
        {ok, [#{summary := Summary} | _]} = erlmcp_flow_correlation_tracker:get_trace_chain(T),
        ?assert(byte_size(Summary) =< 129),
        ?assertMatch(#{max_ms := 4294967295, max_traceparent_bytes := 512,
                       max_tracestate_bytes := 32768}, erlmcp_flow_requirements:limits()),
        erlmcp_flow_test_util:unregister_all()
    after
        erlmcp_flow_test_util:stop(Apps)
    end.

format_error_test() ->
    [?assert(is_list(erlmcp_flow_config:format_error(R)))
     || R <- [{unknown_config_key, routing}, {unknown_config_key, {timeouts, x}},
              {invalid_config, clock, sundial}, {invalid_config, timeouts, [x]},
              {invalid_config, {timeouts, routing}, 0},
              {conflicting_config, {timeouts, heartbeat}, 1, {failure_detector, heartbeat_interval}, 2}]],
    %% keys whose value may be undefined or infinity
    ?assertMatch({ok, _}, erlmcp_flow_config:validate(
                            #{export => #{file => undefined, url => undefined},
                              byzantine => #{hmac_secret => undefined, hmac_secret_file => undefined},
                              load_balancer => #{hash_balance_factor => infinity},
                              q_learning => #{model_path => undefined}})),
    ?assertMatch({error, {invalid_config, {export, url}, 42}},
                 erlmcp_flow_config:validate(#{export => #{url => 42}})).

tmp_dir() ->
    D = filename:join(["/tmp", "erlmcp_flow_robust_" ++ os:getpid() ++ "_"
                       ++ integer_to_list(erlang:unique_integer([positive]))]),
    _ = file:del_dir_r(D),
    ok = filelib:ensure_dir(filename:join(D, "x")),
    D.

%% A defect inside the routing path is an answer, not an exception at the
%% caller: here the bulkhead server is stuck, so the call that puts the
%% caller in its line times out (5 s).
internal_error_test_() ->
    {timeout, 30, fun internal_error/0}.

internal_error() ->
    Apps = erlmcp_flow_test_util:start(),
    try
        Hang = raw_agent(fun(_) -> noreply end),
        ok = erlmcp_flow:register_agent(<<"h">>, Hang, [<<"x">>]),
        [{ok, _, _} = erlmcp_flow:route_task(#{}, #{timeout => 60000}) || _ <- lists:seq(1, 10)],
        ok = sys:suspend(erlmcp_flow_bulkhead),
        try
            ?assertMatch({error, {internal_error, {exit, {timeout, _}}}, #{trace_id := _}},
                         erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>]},
                                             #{routing_timeout => 10000, error_meta => true}))
        after
            sys:resume(erlmcp_flow_bulkhead)
        end,
        ?assertMatch(#{tasks_failed := 1}, erlmcp_flow:stats()),
        %% the routed tasks end with their agent
        exit(Hang, kill)
    after
        erlmcp_flow_test_util:stop_drained(Apps)
    end.

%% route_task/2 while the application stops under it (its waiters'
%% supervisor gone between the decision and the waiter's start): an error
%% answer, not an exit of the caller; the lease taken is given back.
route_task_while_stopping_test() ->
    Apps = erlmcp_flow_test_util:start(),
    try
        ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
        ok = supervisor:terminate_child(erlmcp_flow_sup, erlmcp_flow_task_sup),
        ?assertEqual({error, not_started}, erlmcp_flow:route_task(#{}, #{capabilities => [<<"x">>]})),
        ?assertMatch(#{in_flight := 0}, erlmcp_flow:stats()),
        {ok, _} = supervisor:restart_child(erlmcp_flow_sup, erlmcp_flow_task_sup),
        ?assertMatch({ok, <<"a">>, _}, erlmcp_flow:route_task(#{}, #{capabilities => [<<"x">>]}))
    after
        erlmcp_flow_test_util:stop_drained(Apps)
    end.
