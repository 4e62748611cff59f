%% @private
%% @doc MCP's Streamable HTTP transport at `/mcp' on the transports' HTTP
%% listener (its limits and token apply).
%%
%% Sessions by `Mcp-Session-Id' (made by `initialize', required after it:
%% 400 without, 404 for one unknown or ended); `DELETE' ends a session;
%% `GET' is 405: this server offers no stream outside a request.
%%
%% Versions: a request's `MCP-Protocol-Version' header, when given, must be
%% a version spoken (400 otherwise); without it the session's version
%% applies. Batches are answered under 2025-03-26 and refused (400,
%% -32600) from 2025-06-18 on, where JSON-RPC batching is gone.
%%
%% A `tools/call' answers with one JSON response, unless the server behind
%% sends something for the caller during the call (progress for the
%% caller's `progressToken', log messages at or above the session's
%% `logging/setLevel', its own requests `sampling/createMessage',
%% `elicitation/create', `roots/list', a cancellation of one of them): then
%% the answer becomes an event stream (`text/event-stream', chunked) whose
%% events carry those messages and, last, the response. The server's
%% requests get ids of this session's own (`erlmcp_flow:N'); the client
%% answers them with a POST of the response, which goes back to the server
%% under its own id. A client that did not declare the capability (or does
%% not accept an event stream) is not asked: the server gets the error
%% -32601. `notifications/cancelled' stops the named request of the same
%% session (-32800 in place of its result, or no answer on a stream).
%%
%% At most `mcp.max_sessions' sessions are open (10 000) and
%% `mcp.max_sessions_per_client' per client address (1 000): past either,
%% a new `initialize' ends the least recently used session with no request
%% in flight (of that client when its own bound is the one reached), so a
%% new client always gets in; 503 only when every session is busy. A session
%% idle for an hour ends.
-module(erlmcp_flow_mcp_http).

-export([handle/4]).
-export([sessions/0]).

-define(SESSIONS, erlmcp_flow_mcp_sessions).

%% The session rows: `{Sid, Version, LastUsed, Client, #{level, caps}}';
%% `{{Sid, RequestId}, Worker}' while a request runs; `{{Sid, {answer,
%% GwId}}, Agent, ServerId}' while a server's request waits for the client.

%% `Listener' says where the request came in: `ip', the listener's bind
%% address (and `allowed_origins'), for the Origin rule
%% (`erlmcp_flow_http_origin'); `permit', asked before a `tools/call' (the
%% listener's budget of requests waiting on agents: past it -32002);
%% `peer', the client's address (the per-client session bound).
-spec handle(atom() | binary(), [{binary(), binary()}], binary(),
             #{ip := term(), permit => fun(() -> ok | overloaded), atom() => term()}) ->
          {pos_integer(), iodata(), binary()} | {pos_integer(), iodata(), binary(), list()}
          | {deferred, fun((fun()) -> term())}.
handle(Method, Headers, Body, Listener) ->
    case erlmcp_flow_http_origin:allowed(Listener, Headers) of
        true ->
            Permit = maps:get(permit, Listener, fun() -> ok end),
            serve_method(Method, Headers, Body, Listener#{permit => Permit});
        false ->
            {403, "application/json", error_json(null, <<"Forbidden: Host or Origin is not allowed">>)}
    end.

serve_method('GET', _Headers, _Body, _L) ->
    {405, "text/plain", <<"this server offers no event stream outside a request: POST /mcp\n">>,
     [{"allow", "POST, DELETE"}]};
serve_method('DELETE', Headers, _Body, _L) ->
    case session(Headers) of
        {ok, {Sid, _, _}} -> end_session(Sid), {200, "application/json", <<>>};
        {error, Status, Why} -> error_reply(Status, null, Why)
    end;
serve_method('POST', Headers, Body, L) ->
    case erlmcp_flow_jsonrpc:decode(Body) of
        {single, {request, Id, <<"initialize">>, Params}} ->
            initialize(Id, Params, L);
        {single, {invalid, Id, Code, Msg, Data}} ->
            %% not JSON-RPC at all (parse error, too deep, ...): said at once
            {400, "application/json", erlmcp_flow_jsonrpc:response(Id, {error, Code, Msg, Data})};
        Decoded ->
            case {session(Headers), version(Headers)} of
                {{ok, Session}, {ok, V}} -> serve(Session, V, Decoded, Headers, L);
                {{ok, _}, error} -> error_reply(400, null, <<"Bad Request: unsupported MCP-Protocol-Version">>);
                {{error, Status, Why}, _} -> error_reply(Status, null, Why)
            end
    end;
serve_method(_Method, _Headers, _Body, _L) ->
    {405, "text/plain", <<"POST, DELETE /mcp\n">>, [{"allow", "POST, DELETE"}]}.

%%====================================================================
%% Sessions
%%====================================================================

%% @doc Sessions open now.
-spec sessions() -> non_neg_integer().
sessions() ->
    try ets:select_count(?SESSIONS, [{{'$1', '_', '_', '_', '_'}, [{is_binary, '$1'}], [true]}])
    catch error:badarg -> 0
    end.

initialize(Id, Params, L) ->
    Client = client(L),
    case make_room(Client) of
        ok ->
            {ok, Result, Version} = erlmcp_flow_mcp_server:initialize(Params),
            Caps = case Params of
                       #{<<"capabilities">> := C} when is_map(C) -> C;
                       _ -> #{}
                   end,
            Sid = new_session(Version, Client, Caps),
            {200, "application/json", erlmcp_flow_jsonrpc:response(Id, {ok, Result}),
             [{"mcp-session-id", Sid}]};
        full ->
            %% every session has a request in flight: none can end now
            error_reply(503, Id, <<"Too many MCP sessions, all busy: end some (DELETE /mcp)">>)
    end.

client(#{peer := {Ip, _}}) -> Ip;
client(_) -> undefined.

%% Room for one more session: past the node's bound or the client's, the
%% least recently used idle session (the client's own for its bound) ends.
make_room(Client) ->
    Max = erlmcp_flow_config:get(mcp, max_sessions),
    PerClient = erlmcp_flow_config:get(mcp, max_sessions_per_client),
    %% the table's size bounds both counts: below the bounds (the common
    %% case) nothing is scanned
    Rows = ets:info(?SESSIONS, size),
    Mine = case Rows >= PerClient of
               true -> ets:select_count(?SESSIONS, [{{'$1', '_', '_', Client, '_'}, [{is_binary, '$1'}], [true]}]);
               false -> 0
           end,
    if
        Mine >= PerClient -> evict(Client);
        Rows < Max -> ok;
        true ->
            case sessions() >= Max of
                true -> evict('_');
                false -> ok
            end
    end.

%% The least recently used session with nothing in flight ends: the
%% candidates and the busy sessions read in one pass each (a look per
%% candidate made a flood of busy sessions quadratic).
evict(Client) ->
    Candidates = ets:select(?SESSIONS, [{{'$1', '_', '$2', Client, '_'}, [{is_binary, '$1'}],
                                         [{{'$2', '$1'}}]}]),
    Busy = maps:from_keys(ets:select(?SESSIONS, [{{{'$1', '_'}, '_'}, [{is_binary, '$1'}], ['$1']}]), true),
    case [Sid || {_, Sid} <- lists:sort(Candidates), not is_map_key(Sid, Busy)] of
        [Sid | _] -> end_session(Sid), ok;
        [] -> full
    end.

new_session(Version, Client, Caps) ->
    Sid = string:lowercase(binary:encode_hex(crypto:strong_rand_bytes(16))),
    ets:insert(?SESSIONS, {Sid, Version, erlang:monotonic_time(millisecond), Client,
                           #{level => undefined, caps => Caps}}),
    Sid.

end_session(Sid) ->
    ets:delete(?SESSIONS, Sid),
    ets:match_delete(?SESSIONS, {{Sid, {answer, '_'}}, '_', '_'}),
    ok.

session(Headers) ->
    case lists:keyfind(<<"mcp-session-id">>, 1, Headers) of
        false ->
            {error, 400, <<"Bad Request: no Mcp-Session-Id (initialize first)">>};
        {_, Sid} ->
            case ets:lookup(?SESSIONS, Sid) of
                [{Sid, Version, _, _, Info}] ->
                    ets:update_element(?SESSIONS, Sid, {3, erlang:monotonic_time(millisecond)}),
                    {ok, {Sid, Version, Info}};
                [] ->
                    {error, 404, <<"Session not found">>}
            end
    end.

%% The version of this request: its header's (when spoken), else the
%% session's (`undefined' here).
version(Headers) ->
    case lists:keyfind(<<"mcp-protocol-version">>, 1, Headers) of
        false ->
            {ok, undefined};
        {_, V} ->
            case lists:member(V, erlmcp_flow_mcp_server:versions()) of
                true -> {ok, V};
                false -> error
            end
    end.

%%====================================================================
%% Requests
%%====================================================================

serve({Sid, SessionVersion, Info}, HeaderVersion, Decoded, Headers, L) ->
    Version = case HeaderVersion of
                  undefined -> SessionVersion;
                  V -> V
              end,
    Session = #{sid => Sid, version => Version, info => Info, permit => maps:get(permit, L),
                sse => accepts_stream(Headers)},
    case Decoded of
        {single, {request, Id, <<"tools/call">>, Params}} ->
            {deferred, fun(Stream) -> tools_call(Session, Id, Params, Stream) end};
        {single, Item} ->
            case item(Session, Item) of
                none -> {202, "application/json", <<>>};
                Json -> {200, "application/json", Json}
            end;
        {batch, Items} when Version =:= <<"2025-03-26">> ->
            case [J || I <- Items, J <- [item(Session, I)], J =/= none] of
                [] -> {202, "application/json", <<>>};
                Js -> {200, "application/json", iolist_to_binary([$[, lists:join($,, Js), $]])}
            end;
        {batch, _} ->
            {400, "application/json",
             erlmcp_flow_jsonrpc:response(null, {error, -32600, <<"Invalid Request">>,
                                                 #{reason => <<"JSON-RPC batches are not part of MCP ",
                                                               Version/binary>>}})}
    end.

accepts_stream(Headers) ->
    case lists:keyfind(<<"accept">>, 1, Headers) of
        {_, A} ->
            binary:match(erlmcp_flow_http_parser:lowercase(A), <<"text/event-stream">>) =/= nomatch;
        false -> false
    end.

item(S, {request, Id, <<"tools/call">>, Params}) ->
    %% in a batch (2025-03-26): answered whole, nothing relayed
    #{permit := Permit, version := V} = S,
    case Permit() of
        ok -> erlmcp_flow_jsonrpc:response(Id, shaped(V, <<"tools/call">>, run(S, Id, <<"tools/call">>, Params)));
        overloaded -> erlmcp_flow_jsonrpc:response(Id, overloaded())
    end;
item(#{sid := Sid} = S, {request, Id, <<"logging/setLevel">> = M, Params}) ->
    case erlmcp_flow_mcp_server:log_level(Params) of
        {ok, Level} ->
            case ets:lookup(?SESSIONS, Sid) of
                [{Sid, V, T, C, Info}] -> ets:insert(?SESSIONS, {Sid, V, T, C, Info#{level := Level}});
                [] -> ok
            end,
            erlmcp_flow_mcp:set_log_level(most_verbose());
        _ ->
            ok
    end,
    erlmcp_flow_jsonrpc:response(Id, run(S, Id, M, Params));
item(#{version := V} = S, {request, Id, Method, Params}) ->
    erlmcp_flow_jsonrpc:response(Id, shaped(V, Method, run(S, Id, Method, Params)));
item(#{sid := Sid}, {notification, <<"notifications/cancelled">>, #{<<"requestId">> := Rid}}) ->
    case ets:lookup(?SESSIONS, {Sid, Rid}) of
        [{_, Worker}] -> exit(Worker, cancelled);
        [] -> ok
    end,
    none;
item(_S, {notification, _, _}) ->
    none;
item(#{sid := Sid}, {response, GwId, Outcome}) ->
    %% the client's answer to a server's request: back to that server
    _ = case ets:take(?SESSIONS, {Sid, {answer, GwId}}) of
            [{_, Agent, ServerId}] -> Agent ! {mcp_client_answer, ServerId, Outcome};
            [] -> ok
        end,
    none;
item(_S, {invalid, Id, Code, Msg, Data}) ->
    erlmcp_flow_jsonrpc:response(Id, {error, Code, Msg, Data}).

%% The most verbose level any session asked for: what the servers behind
%% are asked to send (each session still gets only its own level's).
most_verbose() ->
    Levels = [L || {_, _, _, _, #{level := L}} <- ets:select(?SESSIONS, [{{'$1', '_', '_', '_', '_'},
                                                                         [{is_binary, '$1'}], ['$_']}]),
                   L =/= undefined],
    case [L || L <- erlmcp_flow_mcp_server:log_levels(), lists:member(L, Levels)] of
        [First | _] -> First;
        [] -> undefined
    end.

shaped(V, Method, {ok, Result}) -> {ok, erlmcp_flow_mcp_server:shape(V, Method, Result)};
shaped(_V, _Method, Other) -> Other.

overloaded() ->
    {error, -32002, <<"Overloaded">>, #{reason => <<"too many requests wait on agents">>}}.

%% A single `tools/call': JSON, or an event stream once the server sends
%% something for the caller.
tools_call(#{permit := Permit} = S, Id, Params, Stream) ->
    case Permit() of
        overloaded ->
            {200, "application/json", erlmcp_flow_jsonrpc:response(Id, overloaded())};
        ok ->
            Ref = make_ref(),
            {Pid, MRef} = start(S, Id, <<"tools/call">>, Params, #{relay => {self(), Ref}}),
            relay_loop(S#{id => Id, ref => Ref, pid => Pid, mref => MRef, stream => Stream,
                          streaming => false, asked => []})
    end.

relay_loop(#{pid := Pid, mref := MRef, ref := Ref} = R) ->
    receive
        {mcp_result, Pid, Result} ->
            erlang:demonitor(MRef, [flush]),
            finish(R, Result);
        {'DOWN', MRef, process, Pid, Why} ->
            logger:error("erlmcp_flow: MCP request tools/call crashed: ~0p", [Why]),
            finish(R, {error, -32603, <<"Internal error">>, undefined});
        {mcp_relay, Ref, Msg} ->
            relay_loop(relay(Msg, R))
    end.

finish(#{sid := Sid, id := Id, pid := Pid, asked := Asked, version := V} = R, Result0) ->
    ets:delete_object(?SESSIONS, {{Sid, Id}, Pid}),
    [ets:delete(?SESSIONS, {Sid, {answer, G}}) || G <- Asked],
    Result = case Result0 of
                 cancelled -> {error, -32800, <<"Request cancelled">>, undefined};
                 Other -> shaped(V, <<"tools/call">>, Other)
             end,
    Json = erlmcp_flow_jsonrpc:response(Id, Result),
    case R of
        #{streaming := false} ->
            {200, "application/json", Json};
        #{streaming := true, stream := Stream} when Result0 =:= cancelled ->
            %% cancelled: no answer is due
            _ = Stream,
            streamed;
        #{streaming := true, stream := Stream} ->
            _ = Stream({chunk, event(Json)}),
            streamed
    end.

%% One message of the server for this call.
relay({notification, <<"notifications/message">> = M, Params}, #{info := #{level := Level}} = R) ->
    case erlmcp_flow_mcp_server:admits(Level, maps:get(<<"level">>, Params, <<"info">>)) of
        true -> emit({notification, M, Params}, R);
        false -> R
    end;
relay({notification, M, Params}, R) ->
    emit({notification, M, Params}, R);
relay({request, Agent, ServerId, _Method, _Params}, #{sse := false} = R) ->
    erlmcp_flow_mcp_server:not_asked(Agent, ServerId, <<"the client accepts no event stream: it cannot be asked">>),
    R;
relay({request, Agent, ServerId, Method, Params}, #{sid := Sid, info := #{caps := Caps}, version := V} = R) ->
    case erlmcp_flow_mcp_server:can_ask(Method, Caps, V) of
        true ->
            GwId = erlmcp_flow_mcp_server:asked_id(),
            ets:insert(?SESSIONS, {{Sid, {answer, GwId}}, Agent, ServerId}),
            R1 = emit({request, GwId, Method, Params}, R),
            R1#{asked := [GwId | maps:get(asked, R1)]};
        false ->
            erlmcp_flow_mcp_server:not_asked(Agent, ServerId),
            R
    end;
relay({cancelled, Agent, ServerId, Reason}, #{sid := Sid, asked := Asked} = R) ->
    %% the server gave up one of its requests: the client is told
    case [G || G <- Asked, [{_, A, S}] <- [ets:lookup(?SESSIONS, {Sid, {answer, G}})],
               A =:= Agent, S =:= ServerId] of
        [G | _] ->
            ets:delete(?SESSIONS, {Sid, {answer, G}}),
            emit({notification, <<"notifications/cancelled">>,
                  #{requestId => G, reason => Reason}}, R);
        [] ->
            R
    end;
relay(_Other, R) ->
    R.

emit(_Msg, #{sse := false} = R) ->
    R;
emit(Msg, #{stream := Stream, streaming := Streaming} = R) ->
    case erlmcp_flow_jsonrpc:encode(Msg) of
        {ok, Json} ->
            Head = case Streaming of
                       true -> ok;
                       false -> Stream({head, 200, "text/event-stream", []})
                   end,
            case Head =:= ok andalso Stream({chunk, event(Json)}) of
                ok -> R#{streaming := true};
                _ ->
                    %% the client went away: its call is stopped
                    exit(maps:get(pid, R), cancelled),
                    R#{streaming := true, sse := false}
            end;
        {error, _} ->
            R
    end.

event(Json) ->
    [<<"event: message\ndata: ">>, Json, <<"\n\n">>].

%% A request other than a single `tools/call': in a process of its own,
%% known to the session while it runs so that a cancellation finds it.
run(S, Id, Method, Params) ->
    {Pid, MRef} = start(S, Id, Method, Params, #{}),
    Result = receive
                 {mcp_result, Pid, R} -> erlang:demonitor(MRef, [flush]), R;
                 {'DOWN', MRef, process, Pid, Why} ->
                     %% killed: the result never came
                     logger:error("erlmcp_flow: MCP request ~ts crashed: ~0p", [Method, Why]),
                     {error, -32603, <<"Internal error">>, undefined}
             end,
    ets:delete_object(?SESSIONS, {{maps:get(sid, S), Id}, Pid}),
    case Result of
        cancelled -> {error, -32800, <<"Request cancelled">>, undefined};
        Other -> Other
    end.

start(#{sid := Sid}, Id, Method, Params, Ctx) ->
    Self = self(),
    %% linked: the request goes with its connection; it traps exits, so that
    %% a cancellation (or the connection's end) stops its wait for an agent
    {Pid, MRef} = spawn_opt(fun() ->
                                    process_flag(trap_exit, true),
                                    receive go -> ok end,
                                    Answer = erlmcp_flow_mcp_server:answer(Method, Params, Ctx),
                                    Self ! {mcp_result, self(), Answer}
                            end, [link, monitor]),
    ets:insert(?SESSIONS, {{Sid, Id}, Pid}),
    Pid ! go,
    {Pid, MRef}.

error_reply(Status, Id, Message) ->
    {Status, "application/json", error_json(Id, Message)}.

error_json(Id, Message) ->
    erlmcp_flow_jsonrpc:response(Id, {error, -32000, Message, undefined}).
