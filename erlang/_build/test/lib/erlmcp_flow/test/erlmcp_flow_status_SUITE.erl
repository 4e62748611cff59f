%% The status page in a real browser: headless Chromium loads `GET /status'
%% from a running node (with a peer node's agents, an agent whose breaker is
%% open, a blacklisted liar, and a recent task that was retried), runs its
%% script, and the rendered DOM is checked for all of them. With
%% STATUS_SCREENSHOT=<path> it also writes a screenshot there (how
%% docs/status.png was made).
-module(erlmcp_flow_status_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("kernel/include/file.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([page_in_chromium/1, json_is_paginated_at_10000_agents/1]).
-export([agent/1]).

-define(SECRET, <<"status-suite-secret-0123456789">>).

all() -> [page_in_chromium, json_is_paginated_at_10000_agents].

init_per_suite(Config) ->
    case chromium() of
        false -> {skip, "chromium is not installed (.ci/setup installs Debian's chromium)"};
        Exe -> [{chromium, Exe} | Config]
    end.

end_per_suite(_Config) ->
    _ = application:stop(erlmcp_flow),
    [application:unset_env(erlmcp_flow, K) || K <- [metrics, circuit_breaker, byzantine]],
    ok.

chromium() ->
    case os:find_executable("chromium") of
        false -> os:find_executable("chromium-browser");
        Exe -> Exe
    end.

page_in_chromium(Config) ->
    start(#{interval_ms => 200}),
    %% a peer node's agents
    {Peer, PeerNode} = start_peer(),
    try
        ok = peer:call(Peer, erlang, apply,
                       [fun() -> [ok = erlmcp_flow:register_agent(Id, spawn(?MODULE, agent, [ok]), [<<"ui">>])
                                  || Id <- [<<"remote-1">>, <<"remote-2">>]], ok end, []]),
        true = net_kernel:connect_node(PeerNode),
        [ok = erlmcp_flow:register_agent(Id, spawn(?MODULE, agent, [Mode]), Caps)
         || {Id, Mode, Caps} <- [{<<"steady-1">>, ok, [<<"ui">>, <<"retry">>, <<"vote">>]},
                                 {<<"steady-2">>, ok, [<<"ui">>, <<"vote">>]},
                                 {<<"steady-3">>, ok, [<<"vote">>]},
                                 {<<"fragile">>, error, [<<"fragile">>]},
                                 {<<"flaky">>, error, [<<"retry">>]},
                                 {<<"liar">>, lie, [<<"vote">>]}]],
        erlmcp_flow_test_util:wait_until(fun() -> length(erlmcp_flow:query_agents([<<"ui">>])) =:= 4 end, 10000),
        %% the fragile agent's breaker opens
        [erlmcp_flow:execute(#{}, #{capabilities => [<<"fragile">>], idempotent => false}) || _ <- lists:seq(1, 6)],
        ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"fragile">>)),
        %% the liar is outvoted and blacklisted
        [{ok, ok, _} = erlmcp_flow:execute(#{}, #{capabilities => [<<"vote">>], quorum => 1}) || _ <- lists:seq(1, 20)],
        erlmcp_flow_test_util:wait_until(fun() -> erlmcp_flow_byzantine_detector:is_blacklisted(<<"liar">>) end),
        %% traffic for the charts, local and remote
        [{ok, ok, _} = erlmcp_flow:execute(#{type => <<"ui">>}, #{capabilities => [<<"ui">>], strategy => q_learning})
         || _ <- lists:seq(1, 300)],
        timer:sleep(600),
        %% last: a task whose first attempt failed and was retried
        TraceId = retried_task(50),
        ct:log("the retried task's trace: ~s", [TraceId]),
        Url = "http://127.0.0.1:" ++ integer_to_list(erlmcp_flow_metrics_http:port()) ++ "/status",
        Dom = dump_dom(?config(chromium, Config), Url),
        ct:log("rendered DOM: ~b bytes", [byte_size(Dom)]),
        %% the script ran and filled every part
        ?assertNotEqual(nomatch, binary:match(Dom, <<"data-loaded=\"true\"">>)),
        [?assertNotEqual(nomatch, binary:match(Dom, <<"data-node=\"", (atom_to_binary(N))/binary, "\"">>))
         || N <- [node(), PeerNode]],
        Row = fun(Id) -> row(Dom, Id) end,
        [?assertNotEqual(nomatch, binary:match(Row(Id), <<"breaker-closed">>))
         || Id <- [<<"steady-1">>, <<"remote-1">>, <<"remote-2">>]],
        ?assertNotEqual(nomatch, binary:match(Row(<<"remote-1">>), atom_to_binary(PeerNode))),
        ?assertNotEqual(nomatch, binary:match(Row(<<"remote-1">>), <<"class=\"remote\"">>)),
        ?assertNotEqual(nomatch, binary:match(Row(<<"fragile">>), <<"breaker breaker-open">>)),
        ?assertNotEqual(nomatch, binary:match(Row(<<"liar">>), <<"class=\"blacklisted\"">>)),
        %% charts, heatmap, explain bars
        [?assertNotEqual(nomatch, binary:match(Dom, <<"data-series=\"", S/binary, "\"">>))
         || S <- [<<"tasks">>, <<"retries">>, <<"fallbacks">>, <<"overloaded">>]],
        ?assertNotEqual(nomatch, binary:match(section(Dom, <<"id=\"heat\"">>), <<"class=\"cell\"">>)),
        ?assertNotEqual(nomatch, binary:match(section(Dom, <<"id=\"explain\"">>), <<"class=\"bar\"">>)),
        %% the retried task: a failed attempt visibly failed, then one that succeeded
        Trace = section(Dom, <<"data-trace=\"", TraceId/binary, "\"">>),
        ?assertNotEqual(nomatch, binary:match(Trace, <<"span attempt failed\" data-outcome=\"error\" data-agent=\"flaky\"">>)),
        ?assertNotEqual(nomatch, binary:match(Trace, <<"span attempt ok\" data-outcome=\"ok\" data-agent=\"steady-1\"">>)),
        ?assertNotEqual(nomatch, binary:match(Trace, <<"span task ok\" data-outcome=\"ok\"">>)),
        case os:getenv("STATUS_SCREENSHOT") of
            false -> ok;
            Shot -> screenshot(?config(chromium, Config), Url, Shot)
        end
    after
        catch peer:stop(Peer),
        _ = application:stop(erlmcp_flow)
    end.

%% 10 000 agents: /status.json carries one page of them (and the most held
%% capabilities), sorted and filtered by the node.
json_is_paginated_at_10000_agents(_Config) ->
    start(#{}),
    try
        Agent = spawn(?MODULE, agent, [ok]),
        [ok = erlmcp_flow:register_agent(<<"bulk-", (integer_to_binary(I))/binary>>, Agent,
                                         [<<"bulk">>, <<"cap-", (integer_to_binary(I rem 300))/binary>>])
         || I <- lists:seq(1, 10000)],
        {ok, _} = application:ensure_all_started(inets),
        Get = fun(Q) ->
                      {ok, {{_, 200, _}, _, Body}} =
                          httpc:request(get, {"http://127.0.0.1:" ++ integer_to_list(erlmcp_flow_metrics_http:port())
                                              ++ "/status.json" ++ Q, []}, [], [{body_format, binary}]),
                      {byte_size(Body), erlmcp_flow_test_json:decode(Body)}
              end,
        {Size, #{<<"agents">> := A, <<"capabilities">> := Caps}} = Get(""),
        ct:log("/status.json at 10 000 agents: ~b bytes", [Size]),
        ?assertMatch(#{<<"total">> := 10000, <<"matching">> := 10000, <<"limit">> := 50}, A),
        ?assertEqual(50, length(maps:get(<<"items">>, A))),
        ?assertEqual(200, length(Caps)),
        ?assert(Size < 200000),
        {_, #{<<"agents">> := B}} = Get("?capability=cap-7&sort=id&order=desc&offset=10&limit=5"),
        ?assertMatch(#{<<"matching">> := 34, <<"offset">> := 10}, B),
        ?assertEqual(5, length(maps:get(<<"items">>, B))),
        {_, #{<<"agents">> := C}} = Get("?limit=100000&sort=in_flight"),
        ?assertEqual(500, length(maps:get(<<"items">>, C)))
    after
        _ = application:stop(erlmcp_flow)
    end.

%%--------------------------------------------------------------------

start(Metrics) ->
    logger:set_primary_config(level, critical),
    _ = application:stop(erlmcp_flow),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, metrics, maps:merge(#{http => true, port => 0}, Metrics)),
    ok = application:set_env(erlmcp_flow, circuit_breaker, #{failure_threshold => 3, min_requests => 3,
                                                             timeout => 600000}),
    ok = application:set_env(erlmcp_flow, byzantine, #{hmac_secret => ?SECRET, min_votes => 4}),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    ok.

%% A peer node with erlmcp_flow and the same secret; this node becomes
%% distributed for it (short names).
start_peer() ->
    case node() of
        nonode@nohost -> {ok, _} = net_kernel:start([list_to_atom(peer:random_name("status")), shortnames]);
        _ -> ok
    end,
    Paths = lists:append([["-pa", P] || P <- code:get_path(), string:find(P, "_build") =/= nomatch]),
    {ok, Peer, Node} = peer:start(#{name => peer:random_name("status-peer"),
                                    connection => standard_io,
                                    args => ["-setcookie", atom_to_list(erlang:get_cookie()) | Paths]}),
    ok = peer:call(Peer, logger, set_primary_config, [level, critical]),
    ok = peer:call(Peer, application, load, [erlmcp_flow]),
    ok = peer:call(Peer, application, set_env, [erlmcp_flow, byzantine, #{hmac_secret => ?SECRET}]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [erlmcp_flow]),
    {Peer, Node}.

%% `ok': answers ok; `error': fails; `lie': answers something else.
agent(Mode) ->
    receive
        {execute_task, _Task, _Ctx, From, Ref} ->
            From ! {task_result, Ref, case Mode of
                                          ok -> {ok, ok};
                                          error -> {error, broken};
                                          lie -> {ok, lie}
                                      end},
            agent(Mode);
        _ ->
            agent(Mode)
    end.

retried_task(0) ->
    error(no_retried_task);
retried_task(N) ->
    case erlmcp_flow:execute(#{type => <<"retried">>}, #{capabilities => [<<"retry">>],
                                                         strategy => round_robin},
                             #{base_retry_delay => 0, max_retry_delay => 0}) of
        {ok, ok, #{attempts := 2, trace_id := T}} -> T;
        {ok, ok, _} -> retried_task(N - 1)
    end.

dump_dom(Exe, Url) ->
    run(Exe, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--virtual-time-budget=5000", "--dump-dom", Url]).

screenshot(Exe, Url, Path) ->
    _ = run(Exe, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--virtual-time-budget=5000", "--window-size=1280,2300",
                  "--screenshot=" ++ Path, Url]),
    {ok, #file_info{size = Size}} = file:read_file_info(Path),
    ?assert(Size > 10000).

%% Chromium's own complaints (no D-Bus in a container, ...) go to /dev/null.
run(Exe, Args) ->
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", "exec \"$0\" \"$@\" 2>/dev/null", Exe | Args]},
                      binary, exit_status, use_stdio]),
    collect(Port, []).

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, [Acc, D]);
        {Port, {exit_status, 0}} -> iolist_to_binary(Acc);
        {Port, {exit_status, S}} -> error({chromium_exit, S, iolist_to_binary(Acc)})
    after 60000 ->
            catch port_close(Port),
            error(chromium_timeout)
    end.

%% The table row of an agent.
row(Dom, Id) ->
    section(Dom, <<"<tr data-agent=\"", Id/binary, "\"">>, <<"</tr>">>).

%% From `Marker' to the end of its element's first closing tag of a block.
section(Dom, Marker) ->
    section(Dom, Marker, <<"</section>">>).

section(Dom, Marker, End) ->
    case binary:match(Dom, Marker) of
        nomatch ->
            error({not_in_dom, Marker});
        {At, _} ->
            Rest = binary:part(Dom, At, byte_size(Dom) - At),
            case binary:match(Rest, End) of
                {E, L} -> binary:part(Rest, 0, E + L);
                nomatch -> Rest
            end
    end.
