%% MCP figures (BENCH_ONLY=mcp make bench-erlang): `tools/call' round trips
%% per second from the official Python SDK client (tests/mcp/host.py, one
%% call at a time) to @modelcontextprotocol/server-everything's `echo',
%% directly and through erlmcp_flow, like for like (stdio behind stdio,
%% Streamable HTTP behind Streamable HTTP), in one run. Needs the MCP test packages (.ci/setup installs them).
-module(erlmcp_flow_bench_mcp).

-export([figures/0]).

-define(CALLS, 300).

figures() ->
    Root = root(),
    Mcp = filename:join(Root, "tests/mcp"),
    Everything = filename:join(Mcp, "node_modules/.bin/mcp-server-everything"),
    %% the servers run on the Node.js the lock pins (22)
    Node = filename:join(Mcp, "node_modules/.bin/node"),
    Python = filename:join(Root, "_build/mcp-venv/bin/python"),
    case filelib:is_file(Everything) andalso filelib:is_file(Python) of
        false ->
            io:format("~nMCP: packages missing (run .ci/setup): no figures~n"),
            #{};
        true ->
            Host = filename:join(Mcp, "host.py"),
            Call = ["--call", "echo", "{\"message\": \"bench\"}"],
            Opts = ["--repeat", integer_to_list(?CALLS), "--quiet"],
            %% stdio: the host launches the server, or erlmcp_flow with it behind
            Cfg = filename:join(Root, "_build/bench/mcp.config"),
            ok = filelib:ensure_dir(Cfg),
            ok = file:write_file(Cfg, io_lib:format("[{erlmcp_flow, [{mcp, #{servers => [#{id => <<\"e\">>, "
                                                    "command => [~p, ~p, \"stdio\"]}]}}]}].~n",
                                                    [Node, Everything])),
            StdioDirect = rate(Python, [Host | Opts] ++ ["--stdio", Node, Everything, "stdio" | Call]),
            StdioFlow = rate(Python, [Host | Opts] ++ ["--stdio", filename:join(Root, "bin/erlmcp-flow"),
                                                       "stdio", "--mcp", "--config",
                                                       filename:rootname(Cfg) | Call]),
            %% HTTP, like for like: the server's own Streamable HTTP, called
            %% directly, or behind erlmcp_flow's /mcp (erlmcp_flow its client
            %% over Streamable HTTP)
            {ok, _} = application:ensure_all_started(inets),
            Port = free_port(),
            Server = open_port({spawn_executable, Node},
                               [{args, [Everything, "streamableHttp"]}, {env, [{"PORT", integer_to_list(Port)}]},
                                binary, exit_status]),
            wait_listening(Port, 100),
            Direct = "http://127.0.0.1:" ++ integer_to_list(Port) ++ "/mcp",
            _ = application:stop(erlmcp_flow),
            ok = application:set_env(erlmcp_flow, transports, #{http => #{enabled => true, port => 0}}),
            {ok, _} = application:ensure_all_started(erlmcp_flow),
            ok = erlmcp_flow_mcp:register_server(<<"e">>, #{url => Direct}, #{}),
            Through = "http://127.0.0.1:" ++ integer_to_list(erlmcp_flow_transport:port(http)) ++ "/mcp",
            %% alternated, twice each: this machine's neighbours move figures
            [HttpDirect1, HttpFlow1, HttpDirect2, HttpFlow2] =
                [rate(Python, [Host | Opts] ++ ["--http", U | Call]) || U <- [Direct, Through, Direct, Through]],
            HttpDirect = max(HttpDirect1, HttpDirect2),
            HttpFlow = max(HttpFlow1, HttpFlow2),
            catch port_close(Server),
            _ = os:cmd("pkill -f 'mcp-server-everything streamableHttp' 2>/dev/null"),
            io:format("~nMCP tools/call round trips, Python SDK client, one call at a time, ~b calls of "
                      "server-everything's echo:~n", [?CALLS]),
            [io:format("  ~-8s direct ~8.1f/s   through erlmcp_flow ~8.1f/s   ratio ~.2f~n",
                       [Name, D, F, F / D])
             || {Name, D, F} <- [{"stdio", StdioDirect, StdioFlow}, {"HTTP", HttpDirect, HttpFlow}]],
            #{stdio => #{direct => StdioDirect, flow => StdioFlow},
              http => #{direct => HttpDirect, flow => HttpFlow}}
    end.

rate(Python, Args) ->
    P = open_port({spawn_executable, Python}, [{args, Args}, binary, exit_status]),
    {0, Out} = collect(P, <<>>),
    #{<<"elapsed_s">> := S, <<"calls">> := N} =
        erlmcp_flow_test_json_free(lists:last(binary:split(string:trim(Out), <<"\n">>, [global]))),
    N / S.

erlmcp_flow_test_json_free(Line) ->
    {ok, M} = erlmcp_flow_jsonrpc:decode_json(Line),
    M.

collect(P, Acc) ->
    receive
        {P, {data, D}} -> collect(P, <<Acc/binary, D/binary>>);
        {P, {exit_status, S}} -> {S, Acc}
    after 300000 -> error(timeout)
    end.

free_port() ->
    {ok, S} = gen_tcp:listen(0, []),
    {ok, Port} = inet:port(S),
    gen_tcp:close(S),
    Port.

wait_listening(_Port, 0) ->
    error(server_not_listening);
wait_listening(Port, K) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, []) of
        {ok, S} -> gen_tcp:close(S);
        _ -> timer:sleep(100), wait_listening(Port, K - 1)
    end.

root() ->
    {ok, Cwd} = file:get_cwd(),
    Cwd.
