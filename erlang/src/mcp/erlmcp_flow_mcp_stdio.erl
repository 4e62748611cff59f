%% @doc erlmcp_flow as an MCP server over standard input and output:
%% `bin/erlmcp-flow stdio --mcp'. Newline-delimited JSON-RPC, one session
%% (the host that launched the node). Requests after `initialize' are served
%% concurrently; `notifications/cancelled' stops the named one (no answer
%% is sent for it, as MCP asks); `notifications/tools/list_changed' goes to
%% the host when the set of routed tools changes (checked every second). At
%% the end of input it answers what is in flight and the node exits 0.
%% Logs go to standard error.
-module(erlmcp_flow_mcp_stdio).

-export([main/0]).
-export([serve/2]).

-define(CHECK_MS, 1000).

-record(st, {port :: port() | {sink, pid()},
             max :: pos_integer(),
             acc = [] :: iodata(),
             version :: binary() | undefined,
             %% request id => worker
             inflight = #{} :: #{term() => pid()},
             workers = #{} :: #{reference() => term()},
             tools = [] :: [binary()],
             eof = false :: boolean()}).

%% @doc Runs the session until the end of input, then halts.
-spec main() -> no_return().
main() ->
    erlmcp_flow_stdio:run(fun await_servers/0, fun serve/2).

%% The servers of the configuration first: the host's first tools/list
%% should have their tools.
await_servers() ->
    case erlmcp_flow_mcp:await_configured(30000) of
        ok -> ok;
        {error, timeout} -> logger:warning("erlmcp_flow: MCP servers not ready after 30 s")
    end.

%% @private One MCP session over `Io' (standard input's port, or `{sink,
%% Pid}' in tests: lines sent as a port sends them, each answer sent to
%% `Pid' as `{stdout, Line}') until the end of its input; the exit status.
-spec serve(port() | {sink, pid()}, pos_integer()) -> non_neg_integer().
serve(Io, Max) ->
    erlang:send_after(?CHECK_MS, self(), check_tools),
    loop(#st{port = Io, max = Max, tools = erlmcp_flow_mcp_server:tool_names()}).

loop(#st{eof = true, workers = W}) when map_size(W) =:= 0 ->
    0;
loop(#st{port = Port} = S) ->
    receive
        {Port, {data, {noeol, Piece}}} ->
            loop(S#st{acc = [S#st.acc, Piece]});
        {Port, {data, {eol, Piece}}} ->
            Line = iolist_to_binary([S#st.acc, Piece]),
            loop(line(Line, S#st{acc = []}));
        {Port, eof} ->
            loop(S#st{eof = true});
        {mcp_result, Ref, Result} ->
            loop(result(Ref, Result, S));
        {'DOWN', Ref, process, _, Why} when is_map_key(Ref, S#st.workers) ->
            %% killed: the result never came
            logger:error("erlmcp_flow: MCP request crashed: ~0p", [Why]),
            loop(result(Ref, {error, -32603, <<"Internal error">>, undefined}, S));
        {'EXIT', _Worker, _} ->
            loop(S);
        check_tools ->
            erlang:send_after(?CHECK_MS, self(), check_tools),
            loop(check_tools(S));
        _ ->
            loop(S)
    end.

line(<<>>, S) ->
    S;
line(Line, #st{max = Max, port = Port} = S) when byte_size(Line) > Max ->
    erlmcp_flow_stdio:out(Port, erlmcp_flow_jsonrpc:too_large(Max, byte_size(Line))),
    S;
line(Line, S) ->
    case erlmcp_flow_jsonrpc:decode(Line) of
        {single, Item} -> item(Item, S);
        {batch, Items} -> lists:foldl(fun item/2, S, Items);
        {error, _} -> S
    end.

item({request, Id, <<"initialize">>, Params}, S) ->
    {ok, Result, Version} = erlmcp_flow_mcp_server:initialize(Params),
    write(S, {response, Id, {ok, Result}}),
    S#st{version = Version};
item({request, Id, <<"ping">>, _}, S) ->
    write(S, {response, Id, {ok, #{}}}),
    S;
item({request, Id, _Method, _}, #st{version = undefined} = S) ->
    write(S, {response, Id, {error, -32600, <<"Not initialized: initialize first">>, undefined}}),
    S;
item({request, Id, Method, Params}, #st{inflight = In, workers = W} = S) ->
    Self = self(),
    %% linked: a request goes with its session; it traps exits, so that a
    %% cancellation or the session's end stops its wait for an agent
    {Pid, Ref} = spawn_opt(fun() ->
                                   process_flag(trap_exit, true),
                                   R = receive {go, Go} -> Go end,
                                   Self ! {mcp_result, R, call(Method, Params)}
                           end, [link, monitor]),
    Pid ! {go, Ref},
    S#st{inflight = In#{Id => Pid}, workers = W#{Ref => Id}};
item({notification, <<"notifications/cancelled">>, #{<<"requestId">> := Rid}}, #st{inflight = In} = S) ->
    case In of
        #{Rid := Pid} -> exit(Pid, cancelled);
        #{} -> ok
    end,
    S;
item({notification, _Method, _Params}, S) ->
    S;
item({response, _Id, _Outcome}, S) ->
    S;
item({invalid, Id, Code, Msg, Data}, S) ->
    write(S, {response, Id, {error, Code, Msg, Data}}),
    S.

%% A request's answer, or -32603 if it crashed (logged): a crash never
%% takes the session down with it.
call(Method, Params) ->
    try erlmcp_flow_mcp_server:call(Method, Params)
    catch Class:Reason:Stack ->
            logger:error("erlmcp_flow: MCP request ~ts crashed: ~0p:~0p~n~0p",
                         [Method, Class, Reason, Stack]),
            {error, -32603, <<"Internal error">>, undefined}
    end.

result(Ref, Result, #st{workers = W, inflight = In} = S) ->
    erlang:demonitor(Ref, [flush]),
    case maps:take(Ref, W) of
        {Id, W1} ->
            case Result of
                cancelled -> ok;
                {ok, R} -> write(S, {response, Id, {ok, R}});
                {error, C, M, D} -> write(S, {response, Id, {error, C, M, D}})
            end,
            S#st{workers = W1, inflight = maps:remove(Id, In)};
        error ->
            S
    end.

check_tools(#st{version = undefined} = S) ->
    S;
check_tools(#st{tools = Old} = S) ->
    case erlmcp_flow_mcp_server:tool_names() of
        Old -> S;
        New ->
            write(S, {notification, <<"notifications/tools/list_changed">>, #{}}),
            S#st{tools = New}
    end.

write(#st{port = Port}, {response, Id, Outcome}) ->
    erlmcp_flow_stdio:out(Port, erlmcp_flow_jsonrpc:response(Id, Outcome));
write(#st{port = Port}, Notification) ->
    {ok, Bin} = erlmcp_flow_jsonrpc:encode(Notification),
    erlmcp_flow_stdio:out(Port, Bin).
