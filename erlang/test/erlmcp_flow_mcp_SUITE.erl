%% MCP against the real thing: MCP servers from npm as routed agents
%% (@modelcontextprotocol/server-everything, three instances, one slowed and
%% one killed mid-call; @modelcontextprotocol/server-memory), the official
%% Python SDK (PyPI `mcp`) as a host over Streamable HTTP and over stdio,
%% and the MCP conformance suite (@modelcontextprotocol/conformance) against
%% erlmcp_flow's server side (with real MCP servers behind it) and its client
%% side. The packages are pinned in tests/mcp (package.json and its lock,
%% requirements.txt) and installed by .ci/setup.
-module(erlmcp_flow_mcp_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([servers_as_agents/1, slow_one_learned_around/1, killed_mid_call_restarts/1,
         timeout_cancels_and_tools_change/1,
         python_host_http/1, python_host_stdio/1, conformance_server/1, conformance_client/1,
         python_host_relays_http/1, python_host_relays_stdio/1, inspector_cli/1]).

all() ->
    [servers_as_agents, slow_one_learned_around, killed_mid_call_restarts,
     timeout_cancels_and_tools_change, python_host_http, python_host_stdio,
     python_host_relays_http, python_host_relays_stdio, inspector_cli, conformance_server,
     conformance_client].

init_per_suite(Config) ->
    Root = erlmcp_flow_test_util:repo_root("tests/mcp/package.json"),
    Mcp = filename:join(Root, "tests/mcp"),
    Bin = fun(N) -> filename:join([Mcp, "node_modules", ".bin", N]) end,
    Python = filename:join(Root, "_build/mcp-venv/bin/python"),
    Missing = fun() -> [F || F <- [Bin("mcp-server-everything"), Bin("mcp-server-memory"),
                                   Bin("conformance"), Bin("mcp-inspector"), Bin("node"), Python],
                             not filelib:is_file(F)]
              end,
    Why = lists:flatten(io_lib:format("MCP packages missing (.ci/setup installs them): ~p",
                                      [Missing()])),
    case erlmcp_flow_test_util:require(mcp, fun() -> Missing() =:= [] end, Why) of
        {skip, _} = Skip ->
            Skip;
        ok ->
            logger:set_primary_config(level, critical),
            {ok, _} = application:ensure_all_started(inets),
            _ = application:stop(erlmcp_flow),
            _ = application:load(erlmcp_flow),
            ok = application:set_env(erlmcp_flow, transports, #{http => #{enabled => true, port => 0}}),
            {ok, _} = application:ensure_all_started(erlmcp_flow),
            %% the npm servers run on the Node.js the lock pins (22), not on
            %% whichever the machine has
            Everything = [Bin("node"), Bin("mcp-server-everything"), "stdio"],
            Slow = [os:find_executable("python3"), filename:join(Mcp, "slow_proxy.py"), "300"
                    | Everything],
            [ok = erlmcp_flow_mcp:register_server(Id, #{command => Cmd}, #{capabilities => [Cap]})
             || {Id, Cmd, Cap} <- [{<<"everything-1">>, Everything, <<"instance:1">>},
                                   {<<"everything-2">>, Everything, <<"instance:2">>},
                                   {<<"everything-slow">>, Slow, <<"instance:slow">>},
                                   {<<"memory">>, [Bin("node"), Bin("mcp-server-memory")],
                                    <<"instance:memory">>}]],
            [{root, Root}, {mcp, Mcp}, {bin, Bin}, {python, Python} | Config]
    end.

end_per_suite(_Config) ->
    _ = application:stop(erlmcp_flow),
    application:unset_env(erlmcp_flow, transports),
    ok.

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

url() ->
    "http://127.0.0.1:" ++ integer_to_list(erlmcp_flow_transport:port(http)) ++ "/mcp".

tool(Name, Args, Extra) ->
    erlmcp_flow:execute(#{tool => Name, arguments => Args},
                        #{capabilities => [<<"tool:", Name/binary>> | Extra]}).

%% Four servers, each one agent holding its tools; a call through the router
%% is a tools/call on one of them.
servers_as_agents(_Config) ->
    Servers = erlmcp_flow_mcp:servers(),
    ?assertEqual([<<"everything-1">>, <<"everything-2">>, <<"everything-slow">>, <<"memory">>],
                 [Id || #{id := Id} <- Servers]),
    ?assertEqual([ready], lists:usort([S || #{status := S} <- Servers])),
    ?assertEqual(3, length(erlmcp_flow:query_agents([<<"tool:echo">>]))),
    {ok, #{<<"content">> := [#{<<"text">> := <<"Echo: hi">>}]}, #{agent_id := A}} =
        tool(<<"echo">>, #{message => <<"hi">>}, []),
    ?assert(lists:member(A, [<<"everything-1">>, <<"everything-2">>, <<"everything-slow">>])),
    {ok, _, #{agent_id := <<"memory">>}} =
        tool(<<"create_entities">>, #{entities => [#{name => <<"flow">>, entityType => <<"router">>,
                                                     observations => [<<"routes MCP calls">>]}]}, []),
    {ok, #{<<"content">> := [#{<<"text">> := Graph}]}, _} = tool(<<"read_graph">>, #{}, []),
    ?assertNotEqual(nomatch, binary:match(Graph, <<"routes MCP calls">>)),
    %% the MCP front lists them with their schemas
    Names = [maps:get(<<"name">>, T) || T <- erlmcp_flow_mcp_server:tools()],
    [?assert(lists:member(N, Names)) || N <- [<<"echo">>, <<"get-sum">>, <<"create_entities">>,
                                              <<"flow_route_task">>]],
    #{<<"inputSchema">> := #{<<"properties">> := #{<<"message">> := _}}} = erlmcp_flow_mcp_tools:tool(<<"echo">>).

%% The instance slowed by 300 ms a message is learned around: Q-learning
%% sends it a small share of the calls once it has tried it.
slow_one_learned_around(_Config) ->
    Agents = [begin
                  {ok, _, #{agent_id := A}} =
                      erlmcp_flow:execute(#{tool => <<"echo">>, arguments => #{message => integer_to_binary(I)}},
                                          #{capabilities => [<<"tool:echo">>], strategy => q_learning}),
                  A
              end || I <- lists:seq(1, 200)],
    Last = lists:nthtail(100, Agents),
    Slow = length([A || A <- Last, A =:= <<"everything-slow">>]),
    ct:log("calls to the slow instance: ~b of the first 100, ~b of the last 100",
           [length([A || A <- lists:sublist(Agents, 100), A =:= <<"everything-slow">>]), Slow]),
    ?assert(Slow < 20).

%% An instance killed (kill -9) in the middle of a call: the call gets one
%% answer, an error; the server is started again and its agent rejoins.
killed_mid_call_restarts(_Config) ->
    [#{os_pid := OsPid, restarts := R0}] = [S || #{id := <<"everything-1">>} = S <- erlmcp_flow_mcp:servers()],
    Self = self(),
    spawn_link(fun() ->
                       Self ! {answer, tool(<<"trigger-long-running-operation">>,
                                            #{duration => 5, steps => 5}, [<<"instance:1">>])}
               end),
    timer:sleep(500),
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    %% its tools stay listed while it restarts (its agent stays registered)
    ?assert(lists:member(<<"trigger-long-running-operation">>, erlmcp_flow_mcp_server:tool_names())),
    ?assertMatch({ok, _}, erlmcp_flow:find_agent(<<"everything-1">>)),
    Answer = receive {answer, A} -> A after 20000 -> error(no_answer) end,
    ct:log("the call's answer: ~p", [Answer]),
    %% one answer: an error, or (the tool is idempotent, its server stays
    %% listed while it restarts) the retry's result once it came back
    case Answer of
        {error, _} -> ok;
        {ok, _, #{tried := [#{reason := {agent_error, {server_down, _}}} | _]}} -> ok
    end,
    receive {answer, Again} -> error({second_answer, Again}) after 500 -> ok end,
    erlmcp_flow_test_util:wait_until(
      fun() ->
              case [S || #{id := <<"everything-1">>} = S <- erlmcp_flow_mcp:servers()] of
                  [#{status := ready, restarts := R}] -> R > R0;
                  _ -> false
              end
      end, 20000),
    {ok, _, #{agent_id := <<"everything-1">>}} = tool(<<"echo">>, #{message => <<"back">>}, [<<"instance:1">>]).

%% A call the router stops waiting for is cancelled at the server
%% (notifications/cancelled), and a server's notifications/tools/list_changed
%% changes its agent's capabilities (tests/mcp/probe_server.py).
timeout_cancels_and_tools_change(Config) ->
    Log = filename:join(?config(root, Config), "_build/test/mcp-probe.log"),
    _ = file:delete(Log),
    ok = erlmcp_flow_mcp:register_server(<<"probe">>,
                                         #{command => [os:find_executable("python3"),
                                                       filename:join(?config(mcp, Config), "probe_server.py"),
                                                       Log]}, #{}),
    try
        ?assertEqual({error, execution_timeout},
                     erlmcp_flow:execute(#{tool => <<"sleep">>, arguments => #{seconds => 10}},
                                         #{capabilities => [<<"tool:sleep">>], timeout => 300,
                                           idempotent => false})),
        erlmcp_flow_test_util:wait_until(
          fun() -> case file:read_file(Log) of
                       {ok, <<"cancelled ", _/binary>>} -> true;
                       _ -> false
                   end
          end, 5000),
        ?assertEqual([], erlmcp_flow:query_agents([<<"tool:extra">>])),
        {ok, _, _} = erlmcp_flow:execute(#{tool => <<"grow">>, arguments => #{}},
                                         #{capabilities => [<<"tool:grow">>]}),
        erlmcp_flow_test_util:wait_until(
          fun() -> erlmcp_flow:query_agents([<<"tool:extra">>]) =:= [<<"probe">>] end, 5000),
        ?assert(lists:member(<<"extra">>, erlmcp_flow_mcp_server:tool_names()))
    after
        erlmcp_flow_mcp:unregister_server(<<"probe">>)
    end.

%% The official Python SDK as a host over Streamable HTTP.
python_host_http(Config) ->
    Out = host(Config, ["--http", url(),
                        "--call", "echo", "{\"message\": \"hi\"}",
                        "--call", "get-sum", "{\"a\": 2, \"b\": 3}",
                        "--call", "flow_stats", "{}"]),
    #{<<"server">> := <<"erlmcp_flow">>, <<"tools">> := Tools, <<"results">> := [Echo, Sum, Stats]} = Out,
    [?assert(lists:member(T, Tools)) || T <- [<<"echo">>, <<"get-sum">>, <<"flow_stats">>, <<"read_graph">>]],
    ?assertMatch(#{<<"isError">> := false, <<"text">> := <<"Echo: hi">>}, Echo),
    ?assertMatch(#{<<"isError">> := false, <<"text">> := <<"The sum of 2 and 3 is 5.">>}, Sum),
    ?assertMatch(#{<<"isError">> := false}, Stats).

%% What server-everything sends its client during a call reaches the
%% Python SDK's host through erlmcp_flow over Streamable HTTP: progress for
%% its token, its sampling and elicitation requests (answered by the host,
%% the answers back to the server); a body past the limit is answered 413
%% and the session goes on.
python_host_relays_http(Config) ->
    Out = host(Config, ["--http", url()] ++ relay_calls() ++
                   ["--call", "echo", "@big:1100000", "--call", "echo", "{\"message\": \"after\"}"]),
    #{<<"results">> := [_, _, _, TooBig, After]} = Out,
    check_relays(Out),
    ?assertMatch(#{<<"exception">> := _}, TooBig),
    ?assertMatch(#{<<"isError">> := false, <<"text">> := <<"Echo: after">>}, After).

%% The same over stdio, the host launching `bin/erlmcp-flow stdio --mcp'.
python_host_relays_stdio(Config) ->
    Cfg = stdio_config(Config),
    Out = host(Config, ["--stdio", filename:join(?config(root, Config), "bin/erlmcp-flow"), "stdio", "--mcp",
                        "--config", filename:rootname(Cfg)] ++ relay_calls() ++
                   %% a line past the limit: answered -32012 with its id (the
                   %% SDK's call fails at once, it does not wait), then the next
                   ["--call", "echo", "@big:1100000", "--call", "echo", "{\"message\": \"after\"}"]),
    check_relays(Out),
    #{<<"results">> := [_, _, _, TooBig, After]} = Out,
    ?assertMatch(#{<<"exception">> := <<"Message too large">>}, TooBig),
    ?assertMatch(#{<<"isError">> := false, <<"text">> := <<"Echo: after">>}, After).

relay_calls() ->
    ["--call", "trigger-long-running-operation", "{\"duration\": 1, \"steps\": 3}",
     "--call", "trigger-sampling-request", "{\"prompt\": \"relayed?\"}",
     "--call", "trigger-elicitation-request", "{}"].

check_relays(#{<<"results">> := [Long, Sampled, Elicited | _]} = Out) ->
    ?assertMatch(#{<<"isError">> := false, <<"progress">> := [_, _, _ | _]}, Long),
    ?assertMatch(#{<<"isError">> := false}, Sampled),
    ?assertNotEqual(nomatch, binary:match(maps:get(<<"text">>, Sampled), <<"sampled by the host">>)),
    ?assertMatch([<<"Resource trigger-sampling-request context: relayed?">>], maps:get(<<"sampling">>, Out)),
    ?assertMatch(#{<<"isError">> := false}, Elicited),
    ?assertMatch([_], maps:get(<<"elicitation">>, Out)),
    ?assertNotEqual(nomatch, binary:match(maps:get(<<"text">>, Elicited), <<"blue">>)).

%% The same over stdio: the host launches `bin/erlmcp-flow stdio --mcp'
%% with a configuration that starts server-everything at boot.
python_host_stdio(Config) ->
    Root = ?config(root, Config),
    Cfg = stdio_config(Config),
    Out = host(Config, ["--stdio", filename:join(Root, "bin/erlmcp-flow"), "stdio", "--mcp",
                        "--config", filename:rootname(Cfg),
                        "--call", "echo", "{\"message\": \"over stdio\"}"]),
    #{<<"tools">> := Tools, <<"results">> := [Echo]} = Out,
    ?assert(lists:member(<<"echo">>, Tools)),
    ?assertMatch(#{<<"isError">> := false, <<"text">> := <<"Echo: over stdio">>}, Echo).

%% The MCP Inspector's CLI (@modelcontextprotocol/inspector, --cli) as the
%% client of POST /mcp: every tool listed has a description (an Erlang
%% agent's undeclared tool too), calls carry the routing and the trace id in
%% _meta, logging/setLevel is accepted, the router's knowledge reads as
%% resources, and a server's sampling request to a client that did not
%% declare sampling comes back as the server's own tool error.
inspector_cli(Config) ->
    ok = erlmcp_flow:register_agent(<<"undeclared">>, erlmcp_flow_test_util:echo_agent(),
                                    [<<"tool:undeclared_echo">>]),
    try
        #{<<"tools">> := Tools} = inspector(Config, ["--method", "tools/list"]),
        [?assertMatch(#{<<"description">> := <<_, _/binary>>}, T) || T <- Tools],
        ?assertMatch([_], [T || #{<<"name">> := <<"undeclared_echo">>} = T <- Tools]),
        ?assertMatch(#{<<"content">> := [#{<<"text">> := <<"Echo: inspected">>}],
                       <<"_meta">> := #{<<"erlmcp_flow">> := #{<<"trace_id">> := <<_:32/binary>>}}},
                     inspector(Config, ["--method", "tools/call", "--tool-name", "echo",
                                        "--tool-arg", "message=inspected"])),
        ?assertEqual(#{}, inspector(Config, ["--method", "logging/setLevel", "--log-level", "warning"])),
        #{<<"resources">> := Resources} = inspector(Config, ["--method", "resources/list"]),
        ?assert(lists:member(<<"erlmcp-flow://tools/echo">>, [U || #{<<"uri">> := U} <- Resources])),
        #{<<"contents">> := [#{<<"text">> := Knowledge}]} =
            inspector(Config, ["--method", "resources/read", "--uri", "erlmcp-flow://tools/echo"]),
        #{<<"tool">> := <<"echo">>, <<"servers">> := Servers, <<"learned_preference">> := _} =
            erlmcp_flow_test_json:decode(Knowledge),
        ?assert(lists:member(<<"everything-1">>, [Id || #{<<"agent_id">> := Id} <- Servers])),
        ?assertMatch(#{<<"isError">> := true, <<"content">> := [#{<<"text">> := <<"MCP error -32601", _/binary>>}]},
                     inspector(Config, ["--method", "tools/call", "--tool-name", "trigger-sampling-request",
                                        "--tool-arg", "prompt=hi"]))
    after
        erlmcp_flow:unregister_agent(<<"undeclared">>)
    end.

inspector(Config, Args) ->
    Bin = ?config(bin, Config),
    Js = filename:join(?config(mcp, Config), "node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"),
    {_Status, Out} = run(Bin("node"), [Js, "--cli", url() | Args], ?config(mcp, Config)),
    ct:log("inspector ~p:~n~s", [Args, Out]),
    %% its answer: the JSON object it prints first (a tool error adds a line
    %% of its own after it)
    erlmcp_flow_test_json:decode(first_object(binary:split(Out, <<"\n">>, [global]), [])).

first_object([<<"{}">> | _], []) -> <<"{}">>;
first_object([<<"}">> | _], Acc) -> iolist_to_binary(lists:reverse([<<"}">> | Acc]));
first_object([Line | Rest], Acc) -> first_object(Rest, [Line | Acc]).

%% A configuration that starts server-everything at boot.
stdio_config(Config) ->
    Dir = filename:join(?config(root, Config), "_build/test/mcp-suite"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Cfg = filename:join(Dir, "mcp.config"),
    Bin = ?config(bin, Config),
    ok = file:write_file(Cfg, io_lib:format("[{erlmcp_flow, [{mcp, #{servers => [#{id => <<\"e\">>, "
                                            "command => [~p, ~p, \"stdio\"]}]}}]}].~n",
                                            [Bin("node"), Bin("mcp-server-everything")])),
    Cfg.

%% The conformance suite's server scenarios against POST /mcp, with a real
%% MCP server (tests/mcp/conformance_tools.py) serving the tools they call:
%% everything not in the committed baseline must pass.
conformance_server(Config) ->
    Mcp = ?config(mcp, Config),
    ok = erlmcp_flow_mcp:register_server(<<"conformance-tools">>,
                                         #{command => [os:find_executable("python3"),
                                                       filename:join(Mcp, "conformance_tools.py")]}, #{}),
    try
        {Status, Out} = conformance(Config, ["server", "--url", url()]),
        ct:log("~s", [Out]),
        ?assertEqual(0, Status)
    after
        erlmcp_flow_mcp:unregister_server(<<"conformance-tools">>)
    end.

%% Its client scenarios against erlmcp_flow's client side
%% (tests/mcp/flow_mcp_client: register_server/3 of the scenario's URL).
conformance_client(Config) ->
    Client = filename:join(?config(mcp, Config), "flow_mcp_client"),
    {Status, Out} = conformance(Config, ["client", "--command", Client, "--suite", "core"]),
    ct:log("~s", [Out]),
    ?assertEqual(0, Status).

%%--------------------------------------------------------------------

host(Config, Args) ->
    Script = filename:join(?config(mcp, Config), "host.py"),
    {Status, Out} = erlmcp_flow_test_util:run_exe(?config(python, Config), [Script | Args]),
    ct:log("host.py ~p: exit ~b~n~s", [Args, Status, Out]),
    0 = Status,
    %% the host's summary: its last line that is a JSON object (servers
    %% behind may write to standard error too)
    Last = lists:last([L || L <- binary:split(string:trim(Out), <<"\n">>, [global]),
                            binary:first(<<L/binary, " ">>) =:= ${]),
    erlmcp_flow_test_json:decode(Last).

conformance(Config, Args) ->
    Mcp = ?config(mcp, Config),
    Node = (?config(bin, Config))("node"),
    Js = filename:join(Mcp, "node_modules/@modelcontextprotocol/conformance/dist/index.js"),
    Baseline = filename:join(Mcp, "conformance-expected-failures.yml"),
    Results = filename:join(?config(root, Config), "_build/test/conformance"),
    run(Node, [Js | Args] ++ ["--expected-failures", Baseline, "-o", Results], Mcp).

run(Exe, Args, Dir) ->
    P = open_port({spawn_executable, Exe}, [{args, Args}, {cd, Dir}, exit_status, binary,
                                             stderr_to_stdout]),
    collect(P, <<>>).

collect(P, Acc) ->
    receive
        {P, {data, D}} -> collect(P, <<Acc/binary, D/binary>>);
        {P, {exit_status, S}} -> {S, Acc}
    after 300000 -> error({timeout, Acc})
    end.
