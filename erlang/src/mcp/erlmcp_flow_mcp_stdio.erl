%% @doc erlmcp_flow as an MCP server over standard input and output:
%% `bin/erlmcp-flow stdio --mcp'. Newline-delimited JSON-RPC, one session
%% (the host that launched the node). Requests after `initialize' are served
%% concurrently; `notifications/cancelled' stops the named one (no answer
%% is sent for it, as MCP asks); `notifications/tools/list_changed' goes to
%% the host when the set of routed tools changes (checked every second). At
%% the end of input it answers what is in flight and the node exits 0.
%% Logs go to standard error.
%%
%% What a server behind sends for a call is relayed to the host as
%% `erlmcp_flow_mcp_http' relays it: progress with the host's token, log
%% messages at or above its `logging/setLevel', and the server's requests
%% (sampling, elicitation, roots: asked only when the host declared the
%% capability, under ids `erlmcp_flow:N' of this session), whose answers go
%% back to the server. Batches are answered under 2025-03-26 (in one array,
%% their requests one after another) and refused (-32600) from 2025-06-18
%% on, and before `initialize'. A line past `transports.max_message_bytes'
%% is answered -32012 with its id when its first bytes hold it, and is
%% discarded as it is read (memory stays flat).
-module(erlmcp_flow_mcp_stdio).

-export([main/0]).
-export([serve/2]).

-define(CHECK_MS, 1000).

-record(st, {port :: port() | {sink, pid()},
             max :: pos_integer(),
             acc = erlmcp_flow_stdio:new_line() :: erlmcp_flow_stdio:line(),
             version :: binary() | undefined,
             caps = #{} :: map(),
             level :: binary() | undefined,
             %% the server's requests put to the host: our id => {agent, its id}
             asked = #{} :: #{binary() => {pid(), term()}},
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
            loop(S#st{acc = erlmcp_flow_stdio:piece(Piece, S#st.acc, S#st.max)});
        {Port, {data, {eol, Piece}}} ->
            Line = erlmcp_flow_stdio:piece(Piece, S#st.acc, S#st.max),
            loop(line(Line, S#st{acc = erlmcp_flow_stdio:new_line()}));
        {mcp_relay, Ref, Msg} when is_map_key(Ref, S#st.workers) ->
            loop(relay(Msg, S));
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

line({over, Size, Head}, #st{max = Max, port = Port} = S) ->
    erlmcp_flow_stdio:out(Port, erlmcp_flow_jsonrpc:too_large(Max, Size, Head)),
    S;
line({0, _}, S) ->
    S;
line({_, Pieces}, S) ->
    case erlmcp_flow_jsonrpc:decode(iolist_to_binary(Pieces)) of
        {single, Item} ->
            item(Item, S);
        {batch, Items} when S#st.version =:= <<"2025-03-26">> ->
            batch(Items, S);
        {batch, _} when S#st.version =:= undefined ->
            write(S, {response, null, {error, -32600, <<"Not initialized: initialize first">>,
                                       undefined}}),
            S;
        {batch, _} ->
            write(S, {response, null, {error, -32600, <<"Invalid Request">>,
                                       #{reason => <<"JSON-RPC batches are not part of MCP ",
                                                     (S#st.version)/binary>>}}}),
            S;
        {error, _} ->
            S
    end.

item({request, Id, <<"initialize">>, Params}, S) ->
    {ok, Result, Version} = erlmcp_flow_mcp_server:initialize(Params),
    write(S, {response, Id, {ok, Result}}),
    Caps = case Params of
               #{<<"capabilities">> := C} when is_map(C) -> C;
               _ -> #{}
           end,
    S#st{version = Version, caps = Caps};
item({request, Id, <<"ping">>, _}, S) ->
    write(S, {response, Id, {ok, #{}}}),
    S;
item({request, Id, _Method, _}, #st{version = undefined} = S) ->
    write(S, {response, Id, {error, -32600, <<"Not initialized: initialize first">>, undefined}}),
    S;
item({request, Id, <<"logging/setLevel">>, Params}, S) ->
    case erlmcp_flow_mcp_server:log_level(Params) of
        {ok, Level} ->
            erlmcp_flow_mcp:set_log_level(Level),
            write(S, {response, Id, {ok, #{}}}),
            S#st{level = Level};
        {error, C, M, D} ->
            write(S, {response, Id, {error, C, M, D}}),
            S
    end;
item({request, Id, Method, Params}, #st{inflight = In, workers = W} = S) ->
    Self = self(),
    %% linked: a request goes with its session; it traps exits, so that a
    %% cancellation or the session's end stops its wait for an agent
    {Pid, Ref} = spawn_opt(fun() ->
                                   process_flag(trap_exit, true),
                                   R = receive {go, Go} -> Go end,
                                   Answer = erlmcp_flow_mcp_server:answer(Method, Params,
                                                                          #{relay => {Self, R}}),
                                   Self ! {mcp_result, R, Answer}
                           end, [link, monitor]),
    Pid ! {go, Ref},
    S#st{inflight = In#{Id => Pid}, workers = W#{Ref => {Id, Method}}};
item({notification, <<"notifications/cancelled">>, #{<<"requestId">> := Rid}}, #st{inflight = In} = S) ->
    case In of
        #{Rid := Pid} -> exit(Pid, cancelled);
        #{} -> ok
    end,
    S;
item({notification, _Method, _Params}, S) ->
    S;
item({response, Id, Outcome}, #st{asked = A} = S) ->
    %% the host's answer to a server's request: back to that server
    case maps:take(Id, A) of
        {{Agent, ServerId}, A1} ->
            Agent ! {mcp_client_answer, ServerId, Outcome},
            S#st{asked = A1};
        error ->
            S
    end;
item({invalid, Id, Code, Msg, Data}, S) ->
    write(S, {response, Id, {error, Code, Msg, Data}}),
    S.

result(Ref, Result, #st{workers = W, inflight = In} = S) ->
    erlang:demonitor(Ref, [flush]),
    case maps:take(Ref, W) of
        {{Id, Method}, W1} ->
            case Result of
                cancelled -> ok;
                {ok, R} -> write(S, {response, Id, {ok, erlmcp_flow_mcp_server:shape(S#st.version, Method, R)}});
                {error, C, M, D} -> write(S, {response, Id, {error, C, M, D}})
            end,
            S#st{workers = W1, inflight = maps:remove(Id, In)};
        error ->
            S
    end.

%% A batch (2025-03-26): its requests answered one after another, in one
%% array; nothing relayed during them.
batch(Items, S) ->
    Answers = [batch_item(I, S) || I <- Items],
    case [A || A <- Answers, A =/= none] of
        [] -> ok;
        Bins -> erlmcp_flow_stdio:out(S#st.port, iolist_to_binary([$[, lists:join($,, Bins), $]]))
    end,
    S.

batch_item({request, Id, Method, Params}, S) when Method =/= <<"initialize">> ->
    Outcome = case erlmcp_flow_mcp_server:answer(Method, Params, #{}) of
                  cancelled -> {error, -32800, <<"Request cancelled">>, undefined};
                  {ok, R} -> {ok, erlmcp_flow_mcp_server:shape(S#st.version, Method, R)};
                  E -> E
              end,
    erlmcp_flow_jsonrpc:response(Id, Outcome);
batch_item({request, Id, _, _}, _S) ->
    erlmcp_flow_jsonrpc:response(Id, {error, -32600, <<"Invalid Request">>,
                                      #{reason => <<"initialize cannot be batched">>}});
batch_item({invalid, Id, Code, Msg, Data}, _S) ->
    erlmcp_flow_jsonrpc:response(Id, {error, Code, Msg, Data});
batch_item(_, _S) ->
    none.

%% What a server behind sends during a call of the host's.
relay({notification, <<"notifications/message">> = M, Params}, #st{level = Level} = S) ->
    _ = erlmcp_flow_mcp_server:admits(Level, maps:get(<<"level">>, Params, <<"info">>)) andalso
        write(S, {notification, M, Params}),
    S;
relay({notification, M, Params}, S) ->
    write(S, {notification, M, Params}),
    S;
relay({request, Agent, ServerId, Method, Params}, #st{caps = Caps, version = V, asked = A} = S) ->
    case erlmcp_flow_mcp_server:can_ask(Method, Caps, V) of
        true ->
            GwId = erlmcp_flow_mcp_server:asked_id(),
            write(S, {request, GwId, Method, Params}),
            S#st{asked = A#{GwId => {Agent, ServerId}}};
        false ->
            erlmcp_flow_mcp_server:not_asked(Agent, ServerId),
            S
    end;
relay({cancelled, Agent, ServerId, Reason}, #st{asked = A} = S) ->
    case [G || {G, {Ag, Sv}} <- maps:to_list(A), Ag =:= Agent, Sv =:= ServerId] of
        [G | _] ->
            write(S, {notification, <<"notifications/cancelled">>, #{requestId => G, reason => Reason}}),
            S#st{asked = maps:remove(G, A)};
        [] ->
            S
    end;
relay(_Other, S) ->
    S.

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
