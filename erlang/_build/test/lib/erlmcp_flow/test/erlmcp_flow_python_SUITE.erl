%% Agents and clients in Python over real sockets (loopback): the examples in
%% examples/python, run with python3 against a node with the TCP and HTTP
%% transports on. Python agents serve tasks routed from Erlang, from the
%% Python client over TCP and over HTTP; one Python agent is killed while its
%% tasks are in flight and every task still gets exactly one answer.
-module(erlmcp_flow_python_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([routed_from_erlang/1, python_client_tcp_and_http/1, agent_killed_mid_task/1,
         tcp_protocol/1]).

-define(CAP, <<"py">>).

all() -> [tcp_protocol, routed_from_erlang, python_client_tcp_and_http, agent_killed_mid_task].

init_per_suite(Config) ->
    case os:find_executable("python3") of
        false ->
            {skip, "python3 is not installed"};
        Python ->
            logger:set_primary_config(level, critical),
            {ok, _} = application:ensure_all_started(inets),
            _ = application:load(erlmcp_flow),
            ok = application:set_env(erlmcp_flow, transports,
                                     #{tcp => #{enabled => true, port => 0},
                                       http => #{enabled => true, port => 0}}),
            {ok, _} = application:ensure_all_started(erlmcp_flow),
            [{python, Python}, {examples, examples_dir()} | Config]
    end.

end_per_suite(_Config) ->
    _ = application:stop(erlmcp_flow),
    application:unset_env(erlmcp_flow, transports).

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    [erlang:port_close(P) || P <- erlang:ports(), erlang:port_info(P, name) =/= undefined,
                             is_python(P)],
    erlmcp_flow_test_util:unregister_all(),
    ok.

is_python(Port) ->
    case erlang:port_info(Port, name) of
        {name, Name} -> string:find(Name, "python") =/= nomatch;
        _ -> false
    end.

examples_dir() ->
    filename:join(erlmcp_flow_test_util:repo_root("examples/python/flow_agent.py"), "examples/python").

%% A Python agent process: flow_agent.py with `Args'.
agent(Config, Id, Args) ->
    Script = filename:join(?config(examples, Config), "flow_agent.py"),
    Port = open_port({spawn_executable, ?config(python, Config)},
                     [{args, [Script, "--port", integer_to_list(erlmcp_flow_transport:port(tcp)),
                              "--id", binary_to_list(Id), "--capability", binary_to_list(?CAP)
                              | Args]},
                      binary, stderr_to_stdout, exit_status]),
    %% a Python interpreter starting on a busy machine: up to about 10 s
    erlmcp_flow_test_util:wait_until(fun() -> {ok, found} =:= find(Id) end, 10000),
    Port.

find(Id) ->
    case erlmcp_flow:find_agent(Id) of
        {ok, _} -> {ok, found};
        E -> E
    end.

%% The protocol by hand, over a socket: pipelined requests answered by id,
%% a line past the limit, and flow.register_agent making the connection an agent.
tcp_protocol(_Config) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(tcp),
                              [binary, {packet, line}, {active, false}]),
    ok = gen_tcp:send(S, [<<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\",\"id\":1}\n">>,
                          <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.nope\",\"id\":2}\n">>,
                          <<"not json\n">>]),
    Answers = [erlmcp_flow_test_json:decode(L) || _ <- [1, 2, 3], {ok, L} <- [gen_tcp:recv(S, 0, 5000)]],
    %% answers come back as they are ready, each with its id
    ?assertEqual(lists:sort([1, 2, null]), lists:sort([maps:get(<<"id">>, A) || A <- Answers])),
    ok = gen_tcp:send(S, <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.register_agent\","
                           "\"params\":{\"agent_id\":\"raw\",\"capabilities\":[\"raw\"]},\"id\":3}\n">>),
    {ok, Reg} = gen_tcp:recv(S, 0, 5000),
    ?assertMatch(#{<<"result">> := #{<<"registered">> := true}}, erlmcp_flow_test_json:decode(Reg)),
    Self = self(),
    spawn_link(fun() -> Self ! {answer, erlmcp_flow:execute(#{n => 1}, #{capabilities => [<<"raw">>]})} end),
    {ok, Req} = gen_tcp:recv(S, 0, 5000),
    #{<<"method">> := <<"flow.execute_task">>, <<"id">> := TaskId,
      <<"params">> := #{<<"task">> := #{<<"n">> := 1}, <<"agent_id">> := <<"raw">>,
                        <<"trace">> := #{<<"traceparent">> := _}}} = erlmcp_flow_test_json:decode(Req),
    ok = gen_tcp:send(S, [<<"{\"jsonrpc\":\"2.0\",\"result\":\"done\",\"id\":">>,
                          integer_to_binary(TaskId), <<"}\n">>]),
    receive {answer, A} -> ?assertMatch({ok, <<"done">>, #{agent_id := <<"raw">>}}, A)
    after 5000 -> error(no_answer)
    end,
    %% the connection drops: the agent goes
    ok = gen_tcp:close(S),
    erlmcp_flow_test_util:wait_until(fun() -> {error, not_found} =:= erlmcp_flow:find_agent(<<"raw">>) end),
    %% a line past the limit: -32012, then the connection closes
    {ok, S2} = gen_tcp:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(tcp),
                               [binary, {packet, line}, {active, false}]),
    ok = gen_tcp:send(S2, binary:copy(<<"x">>, erlmcp_flow_config:get(transports, max_message_bytes) + 10)),
    {ok, Big} = gen_tcp:recv(S2, 0, 5000),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32012}}, erlmcp_flow_test_json:decode(Big)),
    ?assertEqual({error, closed}, gen_tcp:recv(S2, 0, 5000)).

%% Two Python agents; 200 tasks from Erlang, each answered once by one of them.
routed_from_erlang(Config) ->
    _ = agent(Config, <<"py-a">>, []),
    _ = agent(Config, <<"py-b">>, []),
    Answers = [erlmcp_flow:execute(#{n => I}, #{capabilities => [?CAP]}) || I <- lists:seq(1, 200)],
    Agents = lists:usort([A || {ok, #{<<"agent">> := A, <<"echo">> := #{<<"n">> := _}}, _} <- Answers]),
    ?assertEqual(200, length([ok || {ok, _, _} <- Answers])),
    ?assertEqual([<<"py-a">>, <<"py-b">>], Agents).

%% The Python client routes to a Python agent over TCP (pipelined) and over HTTP.
python_client_tcp_and_http(Config) ->
    _ = agent(Config, <<"py-c">>, []),
    Client = filename:join(?config(examples, Config), "flow_client.py"),
    lists:foreach(
      fun({Args, Port}) ->
              {0, Out} = erlmcp_flow_test_util:run_exe(?config(python, Config),
                             [Client, "--port", integer_to_list(Port), "--capability",
                              binary_to_list(?CAP), "--count", "20", "--task", "{\"x\": 1}" | Args]),
              Lines = [erlmcp_flow_test_json:decode(L) || L <- binary:split(Out, <<"\n">>, [global, trim_all])],
              ?assertEqual(20, length(Lines)),
              [?assertMatch(#{<<"result">> := #{<<"agent_id">> := <<"py-c">>,
                                                <<"result">> := #{<<"echo">> := #{<<"x">> := 1}}}}, L)
               || L <- Lines]
      end, [{["--tcp"], erlmcp_flow_transport:port(tcp)},
            {[], erlmcp_flow_transport:port(http)}]).

%% A slow Python agent is killed while tasks are in flight on it: every task
%% still gets exactly one answer, from the other agent.
agent_killed_mid_task(Config) ->
    Slow = agent(Config, <<"py-slow">>, ["--delay-ms", "300", "--once"]),
    _ = agent(Config, <<"py-fast">>, []),
    Self = self(),
    Callers = [spawn_link(fun() ->
                                  Self ! {done, self(), erlmcp_flow:execute(#{n => I},
                                                                            #{capabilities => [?CAP],
                                                                              strategy => round_robin})}
                          end) || I <- lists:seq(1, 40)],
    timer:sleep(100),
    {os_pid, OsPid} = erlang:port_info(Slow, os_pid),
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    Results = [receive {done, P, R} -> R after 30000 -> error({no_answer, P}) end || P <- Callers],
    ?assertEqual(40, length([ok || {ok, _, _} <- Results])),
    %% nothing more arrives: one answer each
    receive {done, _, _} = Extra -> error({second_answer, Extra}) after 200 -> ok end,
    erlmcp_flow_test_util:wait_until(fun() -> {error, not_found} =:= erlmcp_flow:find_agent(<<"py-slow">>) end).

