%% make demo-mcp: three instances of @modelcontextprotocol/server-everything
%% behind erlmcp_flow (one slowed by 150 ms a message), and the official
%% Python SDK as the MCP host calling their `echo' tool through erlmcp_flow's
%% `POST /mcp', in rounds; after each round, the routing table: how the
%% calls spread, each instance's latency and what Q-learning has learned.
-module(erlmcp_flow_demo_mcp).

-export([main/0]).

-define(ROUNDS, 5).
-define(PER_ROUND, 40).

main() ->
    {ok, Cwd} = file:get_cwd(),
    Mcp = filename:join(Cwd, "tests/mcp"),
    %% server-everything on the Node.js the lock pins (22)
    Everything = [filename:join(Mcp, "node_modules/.bin/node"),
                  filename:join(Mcp, "node_modules/.bin/mcp-server-everything"), "stdio"],
    Python = filename:join(Cwd, "_build/mcp-venv/bin/python"),
    logger:set_primary_config(level, error),
    {ok, _} = application:ensure_all_started(inets),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, transports, #{http => #{enabled => true, port => 0}}),
    ok = application:set_env(erlmcp_flow, load_balancer, #{strategy => q_learning}),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    Slow = [os:find_executable("python3"), filename:join(Mcp, "slow_proxy.py"), "150" | Everything],
    [ok = erlmcp_flow_mcp:register_server(Id, #{command => Cmd}, #{})
     || {Id, Cmd} <- [{<<"fast-1">>, Everything}, {<<"fast-2">>, Everything},
                      {<<"slow">>, Slow}]],
    Url = "http://127.0.0.1:" ++ integer_to_list(erlmcp_flow_transport:port(http)) ++ "/mcp",
    io:format("erlmcp_flow as an MCP server at ~s, three server-everything instances behind it "
              "(\"slow\" answers 150 ms late);~nthe Python SDK calls echo ~b times a round "
              "(strategy q_learning):~n", [Url, ?PER_ROUND]),
    lists:foldl(fun(Round, Before) ->
                        {0, _} = run(Python, [filename:join(Mcp, "host.py"), "--repeat",
                                              integer_to_list(?PER_ROUND), "--quiet", "--http", Url,
                                              "--call", "echo", "{\"message\": \"demo\"}"]),
                        table(Round, Before)
                end, #{}, lists:seq(1, ?ROUNDS)),
    halt(0).

table(Round, Before) ->
    {ok, #{candidates := Cands}} = erlmcp_flow:explain(#{capabilities => [<<"tool:echo">>]}),
    io:format("~nround ~b  ~-8s ~7s ~9s ~9s ~8s ~8s~n",
              [Round, "agent", "calls", "p50", "p99", "Q", "softmax"]),
    lists:foldl(fun(#{id := Id, q_value := Q, softmax := P}, Acc) ->
                        {ok, S} = erlmcp_flow:agent_stats(Id),
                        D = maps:get(dispatched, S),
                        io:format("         ~-8s ~7b ~9s ~9s ~8.3f ~7.1f%~n",
                                  [Id, D - maps:get(Id, Before, 0), us(maps:get(p50_us, S)),
                                   us(maps:get(p99_us, S)), Q, 100 * P]),
                        Acc#{Id => D}
                end, Before, lists:sort(fun(#{id := A}, #{id := B}) -> A =< B end, Cands)).

us(undefined) -> "-";
us(V) when V < 1000 -> integer_to_list(V) ++ " us";
us(V) -> io_lib:format("~.1f ms", [V / 1000]).

run(Exe, Args) ->
    P = open_port({spawn_executable, Exe}, [{args, Args}, binary, exit_status]),
    collect(P, <<>>).

collect(P, Acc) ->
    receive
        {P, {data, D}} -> collect(P, <<Acc/binary, D/binary>>);
        {P, {exit_status, S}} -> {S, Acc}
    end.
