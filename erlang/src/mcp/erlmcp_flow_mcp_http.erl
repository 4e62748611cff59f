%% @private
%% @doc MCP's Streamable HTTP transport at `/mcp' on the transports' HTTP
%% listener (its limits and token apply): `POST' with JSON responses,
%% sessions by `Mcp-Session-Id' (made by `initialize', required after it:
%% 400 without, 404 for one unknown or ended), `DELETE' ends a session, and
%% `GET' is 405: this server offers no stream of its own. A request's
%% `MCP-Protocol-Version' header, when given, must be a version spoken (400
%% otherwise). Notifications and responses alone are answered 202.
%% `notifications/cancelled' stops the named request of the same session
%% (answered with the error -32800 instead of its result). At most 10 000
%% sessions are open (503 past it); a session idle for an hour ends.
-module(erlmcp_flow_mcp_http).

-export([handle/4]).
-export([sessions/0]).

-define(SESSIONS, erlmcp_flow_mcp_sessions).
%% Open sessions at most (with the requests in flight they hold).
-define(MAX_SESSIONS, 10000).

%% `Listener' says where the request came in: `ip', the listener's bind
%% address (and `allowed_origins'), for the Origin rule
%% (`erlmcp_flow_http_origin'); `permit', asked before a `tools/call' (the
%% listener's budget of requests waiting on agents: past it -32002).
-spec handle(atom() | binary(), [{binary(), binary()}], binary(),
             #{ip := term(), permit => fun(() -> ok | overloaded), atom() => term()}) ->
          {pos_integer(), iodata(), binary()} | {pos_integer(), iodata(), binary(), list()}.
handle(Method, Headers, Body, Listener) ->
    case erlmcp_flow_http_origin:allowed(Listener, Headers) of
        true ->
            put({?MODULE, permit}, maps:get(permit, Listener, fun() -> ok end)),
            try serve_method(Method, Headers, Body)
            after erase({?MODULE, permit})
            end;
        false ->
            {403, "application/json", error_json(null, <<"Forbidden: Host or Origin is not allowed">>)}
    end.

serve_method('GET', _Headers, _Body) ->
    {405, "text/plain", <<"this server offers no event stream: POST /mcp\n">>, [{"allow", "POST, DELETE"}]};
serve_method('DELETE', Headers, _Body) ->
    case session(Headers) of
        {ok, Sid} -> ets:delete(?SESSIONS, Sid), {200, "application/json", <<>>};
        {error, Status, Why} -> error_reply(Status, null, Why)
    end;
serve_method('POST', Headers, Body) ->
    case erlmcp_flow_jsonrpc:decode(Body) of
        {single, {request, Id, <<"initialize">>, Params}} ->
            case sessions() < ?MAX_SESSIONS of
                true ->
                    {ok, Result, Version} = erlmcp_flow_mcp_server:initialize(Params),
                    Sid = new_session(Version),
                    {200, "application/json", erlmcp_flow_jsonrpc:response(Id, {ok, Result}),
                     [{"mcp-session-id", Sid}]};
                false ->
                    %% bounded: a client opening sessions without end
                    %% cannot grow the node's memory without end
                    error_reply(503, Id, <<"Too many MCP sessions: end some (DELETE /mcp)">>)
            end;
        {single, {invalid, Id, Code, Msg, Data}} ->
            %% not JSON-RPC at all (parse error, too deep, ...): said at once
            {400, "application/json", erlmcp_flow_jsonrpc:response(Id, {error, Code, Msg, Data})};
        Decoded ->
            case {session(Headers), version_ok(Headers)} of
                {{ok, Sid}, true} -> serve(Sid, Decoded);
                {{ok, _}, false} -> error_reply(400, null, <<"Bad Request: unsupported MCP-Protocol-Version">>);
                {{error, Status, Why}, _} -> error_reply(Status, null, Why)
            end
    end;
serve_method(_Method, _Headers, _Body) ->
    {405, "text/plain", <<"POST, DELETE /mcp\n">>, [{"allow", "POST, DELETE"}]}.

%% @doc Sessions open now.
-spec sessions() -> non_neg_integer().
sessions() ->
    try ets:info(?SESSIONS, size) of
        N when is_integer(N) -> N;
        _ -> 0
    catch error:badarg -> 0
    end.

new_session(Version) ->
    Sid = string:lowercase(binary:encode_hex(crypto:strong_rand_bytes(16))),
    ets:insert(?SESSIONS, {Sid, Version, erlang:monotonic_time(millisecond)}),
    Sid.

session(Headers) ->
    case lists:keyfind(<<"mcp-session-id">>, 1, Headers) of
        false ->
            {error, 400, <<"Bad Request: no Mcp-Session-Id (initialize first)">>};
        {_, Sid} ->
            case ets:lookup(?SESSIONS, Sid) of
                [_] -> ets:update_element(?SESSIONS, Sid, {3, erlang:monotonic_time(millisecond)}),
                       {ok, Sid};
                [] -> {error, 404, <<"Session not found">>}
            end
    end.

version_ok(Headers) ->
    case lists:keyfind(<<"mcp-protocol-version">>, 1, Headers) of
        false -> true;
        {_, V} -> lists:member(V, erlmcp_flow_mcp_server:versions())
    end.

serve(Sid, {single, Item}) ->
    case item(Sid, Item) of
        none -> {202, "application/json", <<>>};
        Json -> {200, "application/json", Json}
    end;
serve(Sid, {batch, Items}) ->
    case [J || I <- Items, J <- [item(Sid, I)], J =/= none] of
        [] -> {202, "application/json", <<>>};
        Js -> {200, "application/json", iolist_to_binary([$[, lists:join($,, Js), $]])}
    end.

item(Sid, {request, Id, <<"tools/call">> = Method, Params}) ->
    Permit = get({?MODULE, permit}),
    case Permit() of
        ok -> erlmcp_flow_jsonrpc:response(Id, run(Sid, Id, Method, Params));
        overloaded -> erlmcp_flow_jsonrpc:response(Id, {error, -32002, <<"Overloaded">>,
                                                       #{reason => <<"too many requests wait on agents">>}})
    end;
item(Sid, {request, Id, Method, Params}) ->
    erlmcp_flow_jsonrpc:response(Id, run(Sid, Id, Method, Params));
item(Sid, {notification, <<"notifications/cancelled">>, #{<<"requestId">> := Rid}}) ->
    case ets:lookup(?SESSIONS, {Sid, Rid}) of
        [{_, Worker}] -> exit(Worker, cancelled);
        [] -> ok
    end,
    none;
item(_Sid, {notification, _, _}) ->
    none;
item(_Sid, {response, _, _}) ->
    none;
item(_Sid, {invalid, Id, Code, Msg, Data}) ->
    erlmcp_flow_jsonrpc:response(Id, {error, Code, Msg, Data}).

%% A request in a process of its own, known to the session while it runs
%% so that a cancellation finds it.
run(Sid, Id, Method, Params) ->
    Self = self(),
    %% linked: the request goes with its connection; it traps exits, so that
    %% a cancellation (or the connection's end) stops its wait for an agent
    {Pid, MRef} = spawn_opt(fun() ->
                                    process_flag(trap_exit, true),
                                    receive go -> ok end,
                                    Self ! {mcp_result, self(), call(Method, Params)}
                            end, [link, monitor]),
    Key = {Sid, Id},
    ets:insert(?SESSIONS, {Key, Pid}),
    Pid ! go,
    Result = receive
                 {mcp_result, Pid, R} -> erlang:demonitor(MRef, [flush]), R;
                 {'DOWN', MRef, process, Pid, Why} ->
                     %% killed: the result never came
                     logger:error("erlmcp_flow: MCP request ~ts crashed: ~0p", [Method, Why]),
                     {error, -32603, <<"Internal error">>, undefined}
             end,
    ets:delete_object(?SESSIONS, {Key, Pid}),
    case Result of
        cancelled -> {error, -32800, <<"Request cancelled">>, undefined};
        Other -> Other
    end.

%% A request's answer, or -32603 if it crashed (logged).
call(Method, Params) ->
    try erlmcp_flow_mcp_server:call(Method, Params)
    catch Class:Reason:Stack ->
            logger:error("erlmcp_flow: MCP request ~ts crashed: ~0p:~0p~n~0p",
                         [Method, Class, Reason, Stack]),
            {error, -32603, <<"Internal error">>, undefined}
    end.

error_reply(Status, Id, Message) ->
    {Status, "application/json", error_json(Id, Message)}.

error_json(Id, Message) ->
    erlmcp_flow_jsonrpc:response(Id, {error, -32000, Message, undefined}).
