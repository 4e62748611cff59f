%% @private
%% @doc One MCP server as one routed agent (see `erlmcp_flow_mcp'): its
%% port (newline-delimited JSON-RPC on the server's standard input and
%% output) or its Streamable HTTP endpoint, the handshake, the tool list,
%% the agent's registration, tasks as `tools/call', cancellation, and the
%% server's restarts with backoff (its agent stays registered meanwhile, so
%% its tools stay listed; a task that comes while it is down fails at once
%% with `{server_restarting, Id}', retried elsewhere when the tool is
%% idempotent).
%%
%% Relaying: a task from an MCP session (`#{mcp := #{relay := {Pid, Ref},
%% progress_token := Token}}') gives the server a progress token of its own
%% (the call's JSON-RPC id) when the caller gave one; the server's progress
%% for it goes to `Pid' as `{mcp_relay, Ref, {notification,
%% <<"notifications/progress">>, Params}}' with the caller's token. The
%% server's log messages and its requests to its client (sampling,
%% elicitation, roots; as `{mcp_relay, Ref, {request, self(), ServerId,
%% Method, Params}}', answered by `{mcp_client_answer, ServerId, Outcome}')
%% go to the session of the call they came with: over Streamable HTTP the
%% call whose response stream carried them; over stdio, where the protocol
%% does not say, the latest call in flight with a session. With no session
%% to ask, the server's request gets -32601 (`roots/list' an empty list:
%% servers ask for roots as they start, outside any call). A level set by `{set_log_level,
%% Level}' is passed on as `logging/setLevel' to a server declaring
%% `logging'.
-module(erlmcp_flow_mcp_agent).
-behaviour(gen_server).

-export([start_link/3]).
-export([await_ready/2]).
-export([info/1]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-define(VERSION, <<"2025-11-25">>).
-define(MIN_BACKOFF, 100).
-define(MAX_BACKOFF, 5000).
-define(MAX_LINE, 16 * 1024 * 1024).

-record(state, {id :: binary(),
                spec :: map(),
                caps :: [binary()],
                port :: port() | undefined,
                buf = <<>> :: binary(),
                %% Streamable HTTP: the session the server gave, if any
                session :: binary() | undefined,
                phase = starting :: starting | initializing | listing | ready | restarting,
                next_id = 1 :: pos_integer(),
                %% JSON-RPC id => what the answer is for
                pending = #{} :: #{integer() => term()},
                by_ref = #{} :: #{reference() => integer()},
                tools = [] :: [map()],
                listing = [] :: [map()],
                registered = false :: boolean(),
                waiters = [] :: [gen_server:from()],
                backoff = ?MIN_BACKOFF :: pos_integer(),
                restarts = 0 :: non_neg_integer(),
                last_error :: term(),
                %% Streamable HTTP: this agent's own httpc (its connections
                %% and their TLS trust are never shared with another server's)
                httpc :: pid() | undefined,
                %% calls from MCP sessions: JSON-RPC id => where their
                %% messages go and the caller's progress token
                relays = #{} :: #{integer() => #{relay := {pid(), reference()}, token := term()}},
                %% the server's requests passed to a session: its id => session
                asked = #{} :: #{term() => {pid(), reference()}},
                %% Streamable HTTP responses arriving: httpc's id => the
                %% JSON-RPC id they answer, their type and bytes so far
                streams = #{} :: #{reference() => map()},
                server_caps = #{} :: map(),
                %% while a Streamable HTTP answer's messages are read: the
                %% JSON-RPC id of the call it answers
                current = none :: integer() | none,
                log_level :: binary() | undefined}).

-spec start_link(binary(), map(), map()) -> {ok, pid()}.
start_link(Id, Spec, Opts) ->
    gen_server:start_link(?MODULE, {Id, Spec, Opts}, []).

%% @doc Waits until the server is initialized and its agent registered.
-spec await_ready(pid(), timeout()) -> ok | {error, term()}.
await_ready(Pid, Timeout) ->
    try gen_server:call(Pid, await_ready, Timeout)
    catch exit:{timeout, _} -> {error, {not_ready, timeout}};
          exit:{Reason, _} -> {error, {not_ready, Reason}}
    end.

-spec info(pid()) -> map() | undefined.
info(Pid) ->
    try gen_server:call(Pid, info, 5000)
    catch exit:_ -> undefined
    end.

%%====================================================================
%% gen_server callbacks
%%====================================================================

-spec init({binary(), map(), map()}) -> {ok, #state{}}.
init({Id, Spec, Opts}) ->
    process_flag(trap_exit, true),
    self() ! connect,
    {ok, #state{id = Id, spec = Spec, caps = maps:get(capabilities, Opts, [])}}.

-spec handle_call(term(), gen_server:from(), #state{}) ->
          {reply, term(), #state{}} | {noreply, #state{}}.
handle_call(await_ready, _From, #state{phase = ready} = State) ->
    {reply, ok, State};
handle_call(await_ready, From, #state{phase = restarting, restarts = R, last_error = E} = State)
  when R > 0, E =/= undefined ->
    %% never came up: say why
    {reply, {error, E}, State#state{waiters = [From | State#state.waiters]}};
handle_call(await_ready, From, #state{waiters = W} = State) ->
    {noreply, State#state{waiters = [From | W]}};
handle_call(info, _From, #state{id = Id, spec = Spec, phase = P, tools = T, restarts = R,
                                port = Port} = State) ->
    OsPid = case is_port(Port) andalso erlang:port_info(Port, os_pid) of
                {os_pid, O} -> O;
                _ -> undefined
            end,
    {reply, #{id => Id, pid => self(), spec => Spec, status => P, restarts => R, os_pid => OsPid,
              tools => [maps:get(<<"name">>, X, null) || X <- T]}, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(connect, State) ->
    {noreply, connect(State)};
handle_info({Port, {data, Data}}, #state{port = Port, buf = Buf} = State) ->
    {noreply, lines(<<Buf/binary, Data/binary>>, State)};
handle_info({Port, {exit_status, Status}}, #state{port = Port} = State) ->
    {noreply, down({exit_status, Status}, State#state{port = undefined})};
handle_info({'EXIT', Port, Reason}, #state{port = Port} = State) ->
    {noreply, down({port_exit, Reason}, State#state{port = undefined})};
handle_info({http, {ReqId, stream_start, Headers}}, State) ->
    {noreply, stream_start(ReqId, Headers, State)};
handle_info({http, {ReqId, stream, Part}}, State) ->
    {noreply, stream_part(ReqId, Part, State)};
handle_info({http, {ReqId, stream_end, _Headers}}, State) ->
    {noreply, stream_end(ReqId, State)};
handle_info({http, {ReqId, Result}}, #state{streams = St} = State) ->
    {noreply, http_result(Result, State#state{streams = maps:remove(ReqId, St)})};
handle_info({mcp_client_answer, ServerId, Outcome}, #state{asked = A} = State) ->
    %% a session's client answered the server's request
    State1 = State#state{asked = maps:remove(ServerId, A)},
    {noreply, respond(ServerId, Outcome, State1)};
handle_info({set_log_level, Level}, State) ->
    {noreply, set_level(State#state{log_level = Level})};
handle_info({execute_task, Task, Ctx, From, Ref}, State) ->
    {noreply, execute_task(Task, Ctx, From, Ref, State)};
handle_info({cancel_task, Ref}, #state{by_ref = ByRef, pending = P} = State) ->
    case maps:take(Ref, ByRef) of
        {Id, ByRef1} ->
            State1 = State#state{by_ref = ByRef1, pending = maps:remove(Id, P),
                                 relays = maps:remove(Id, State#state.relays)},
            {noreply, notify(<<"notifications/cancelled">>,
                             #{requestId => Id, reason => <<"the router stopped waiting">>}, State1)};
        error ->
            {noreply, State}
    end;
handle_info(_Info, State) ->
    {noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{port = Port, registered = Reg, id = Id}) ->
    _ = Reg andalso (ok =:= erlmcp_flow:unregister_agent(Id)),
    _ = is_port(Port) andalso catch port_close(Port),
    ok.

%%====================================================================
%% Internal functions
%%====================================================================

connect(#state{spec = #{command := [Exe | Args]}} = State) ->
    case find(text(Exe)) of
        false ->
            down({command_not_found, text(Exe)}, State);
        Path ->
            try open_port({spawn_executable, Path},
                          [{args, [text(A) || A <- Args]}, binary, stream, exit_status, use_stdio,
                           hide]) of
                Port ->
                    initialize(State#state{port = Port, buf = <<>>, phase = initializing})
            catch error:Why ->
                    down({spawn_failed, Why}, State)
            end
    end;
connect(#state{spec = #{url := _}, httpc = undefined} = State) ->
    _ = application:ensure_all_started(inets),
    %% stand-alone, linked to this process: it goes with the agent
    {ok, Httpc} = httpc_of_its_own(1),
    connect(State#state{httpc = Httpc});
connect(#state{spec = #{url := _}} = State) ->
    initialize(State#state{session = undefined, phase = initializing}).

%% A stand-alone httpc names its tables after its profile, so two agents
%% need two profiles: the first free one of `erlmcp_flow_mcp_agent_N' (as
%% many atoms as URL servers were ever up at once; a slot is free again
%% when its agent goes).
httpc_of_its_own(N) when N =< 100000 ->
    Profile = list_to_atom("erlmcp_flow_mcp_agent_" ++ integer_to_list(N)),
    case inets:start(httpc, [{profile, Profile}], stand_alone) of
        {ok, Pid} -> {ok, Pid};
        {error, _} -> httpc_of_its_own(N + 1)
    end.

find(Exe) ->
    case filename:pathtype(Exe) of
        relative ->
            case lists:member($/, Exe) of
                true -> filename:absname(Exe);
                false -> os:find_executable(Exe)
            end;
        _ -> Exe
    end.

text(T) when is_binary(T) -> binary_to_list(T);
text(T) -> T.

initialize(State) ->
    %% what the sessions behind can be asked is relayed to them
    request(<<"initialize">>,
            #{protocolVersion => ?VERSION,
              capabilities => #{sampling => #{}, elicitation => #{}, roots => #{}},
              clientInfo => #{name => <<"erlmcp_flow">>, version => vsn()}},
            initialize, State).

vsn() ->
    {ok, V} = application:get_key(erlmcp_flow, vsn),
    list_to_binary(V).

%% The server went away (or never came): its tasks fail, its agent goes,
%% and it is started again after the backoff.
down(Why, #state{pending = P, id = Id, backoff = B, restarts = R} = State) ->
    maps:foreach(fun(_, {task, From, Ref}) -> From ! {task_result, Ref, {error, {server_down, Why}}};
                    (_, _) -> ok
                 end, P),
    %% the agent stays registered (its tools stay listed) while the server
    %% starts again; tasks meanwhile fail at once (execute_task/5)
    logger:warning("erlmcp_flow: MCP server ~ts is down (~0p); starting it again in ~b ms",
                   [Id, Why, B]),
    erlang:send_after(B, self(), connect),
    State1 = State#state{pending = #{}, by_ref = #{}, phase = restarting, relays = #{}, asked = #{},
                         streams = #{},
                         backoff = min(2 * B, ?MAX_BACKOFF), restarts = R + 1, last_error = Why,
                         buf = <<>>},
    case State#state.phase of
        Phase when (Phase =:= starting orelse Phase =:= initializing orelse Phase =:= listing),
                   R =:= 0 ->
            %% a server that never came up: whoever waits is told why
            [gen_server:reply(W, {error, Why}) || W <- State#state.waiters],
            State1#state{waiters = []};
        _ ->
            State1
    end.

%% Whole lines from the port, each a JSON-RPC message.
lines(Buf, State) ->
    case binary:split(Buf, <<"\n">>) of
        [Line, Rest] -> lines(Rest, message(Line, State));
        [Partial] when byte_size(Partial) > ?MAX_LINE -> State#state{buf = <<>>};
        [Partial] -> State#state{buf = Partial}
    end.

message(<<>>, State) ->
    State;
message(Line, State) ->
    case erlmcp_flow_jsonrpc:decode_json(Line) of
        {ok, Msg} when is_map(Msg) -> handle_message(Msg, State);
        {ok, Msgs} when is_list(Msgs) -> lists:foldl(fun handle_message/2, State, Msgs);
        _ -> State
    end.

handle_message(#{<<"id">> := Id} = Msg, #state{pending = P} = State)
  when not is_map_key(<<"method">>, Msg) ->
    case maps:take(Id, P) of
        {For, P1} -> answered(For, Msg, State#state{pending = P1,
                                                    relays = maps:remove(Id, State#state.relays)});
        error -> State
    end;
handle_message(#{<<"method">> := <<"notifications/tools/list_changed">>}, #state{phase = ready} = State) ->
    list_tools(undefined, State#state{listing = []});
handle_message(#{<<"method">> := <<"ping">>, <<"id">> := Id}, State) ->
    respond(Id, {ok, #{}}, State);
handle_message(#{<<"method">> := Method, <<"id">> := Id} = Msg, #state{asked = A} = State) ->
    %% the server asks something of its client (sampling, elicitation,
    %% roots): the session of the call it came with is asked
    case session(State) of
        {Pid, Ref} = To ->
            Pid ! {mcp_relay, Ref, {request, self(), Id, Method, maps:get(<<"params">>, Msg, #{})}},
            State#state{asked = A#{Id => To}};
        none when Method =:= <<"roots/list">> ->
            %% outside a session's call: erlmcp_flow has no roots of its own
            respond(Id, {ok, #{roots => []}}, State);
        none ->
            respond(Id, {error, -32601, <<"Method not found">>,
                         #{method => Method, reason => <<"no MCP session to ask">>}}, State)
    end;
handle_message(#{<<"method">> := <<"notifications/progress">>,
                 <<"params">> := #{<<"progressToken">> := Token} = Params}, #state{relays = Rs} = State) ->
    _ = case Rs of
            #{Token := #{relay := {Pid, Ref}, token := Caller}} when Caller =/= undefined ->
                Pid ! {mcp_relay, Ref, {notification, <<"notifications/progress">>,
                                        Params#{<<"progressToken">> => Caller}}};
            _ ->
                ok
        end,
    State;
handle_message(#{<<"method">> := <<"notifications/message">> = M, <<"params">> := Params}, State)
  when is_map(Params) ->
    _ = case session(State) of
            {Pid, Ref} -> Pid ! {mcp_relay, Ref, {notification, M, Params}};
            none -> ok
        end,
    State;
handle_message(#{<<"method">> := <<"notifications/cancelled">>,
                 <<"params">> := #{<<"requestId">> := Rid} = Params}, #state{asked = A} = State) ->
    %% the server gave up a request it made of the client
    case maps:take(Rid, A) of
        {{Pid, Ref}, A1} ->
            Pid ! {mcp_relay, Ref, {cancelled, self(), Rid, maps:get(<<"reason">>, Params, null)}},
            State#state{asked = A1};
        error ->
            State
    end;
handle_message(_Notification, State) ->
    State.

%% The session a message of the server belongs to: the call whose HTTP
%% response carries it, else the latest call in flight from a session.
session(#state{relays = Rs, current = Current}) ->
    Call = case Current of
               Id when is_map_key(Id, Rs) -> Id;
               _ when map_size(Rs) > 0 -> lists:max(maps:keys(Rs));
               _ -> none
           end,
    case Call of
        none -> none;
        _ -> maps:get(relay, maps:get(Call, Rs))
    end.

%% The level the sessions asked for, to a server that logs.
set_level(#state{phase = ready, log_level = L, server_caps = #{<<"logging">> := _}} = State)
  when is_binary(L) ->
    request(<<"logging/setLevel">>, #{level => L}, log_level, State);
set_level(State) ->
    State.

answered(initialize, #{<<"result">> := R}, State) ->
    Caps = case R of
               #{<<"capabilities">> := C} when is_map(C) -> C;
               _ -> #{}
           end,
    State1 = notify(<<"notifications/initialized">>, #{}, State#state{server_caps = Caps}),
    list_tools(undefined, State1#state{phase = listing, listing = []});
answered(initialize, #{<<"error">> := E}, State) ->
    down({initialize_refused, E}, close(State));
answered(tools_list, #{<<"result">> := #{<<"tools">> := Tools} = R}, #state{listing = L} = State)
  when is_list(Tools) ->
    case R of
        #{<<"nextCursor">> := C} when is_binary(C) -> list_tools(C, State#state{listing = L ++ Tools});
        _ -> ready(State#state{listing = [], tools = L ++ Tools})
    end;
answered(tools_list, Msg, State) ->
    down({tools_list_failed, maps:get(<<"error">>, Msg, Msg)}, close(State));
answered({task, From, Ref}, Msg, #state{by_ref = ByRef} = State) ->
    Answer = case Msg of
                 %% the tool's own error (bad arguments, a refusal): the
                 %% caller's, answered as is, not the server's failure
                 #{<<"result">> := #{<<"isError">> := true} = R} -> {reject, {tool_error, R}};
                 #{<<"result">> := R} -> {ok, R};
                 %% the server says the call itself is malformed
                 #{<<"error">> := #{<<"code">> := C, <<"message">> := M}}
                   when C =:= -32602; C =:= -32600 -> {reject, {mcp_error, C, M}};
                 #{<<"error">> := #{<<"code">> := C, <<"message">> := M}} -> {error, {mcp_error, C, M}};
                 _ -> {error, {bad_mcp_reply, Msg}}
             end,
    From ! {task_result, Ref, Answer},
    State#state{by_ref = maps:remove(Ref, ByRef)};
answered(_, _Msg, State) ->
    State.

close(#state{port = Port} = State) when is_port(Port) ->
    catch port_close(Port),
    State#state{port = undefined};
close(State) ->
    State.

list_tools(Cursor, State) ->
    Params = case Cursor of
                 undefined -> #{};
                 _ -> #{cursor => Cursor}
             end,
    request(<<"tools/list">>, Params, tools_list, State).

%% The tools are known: the agent holds `tool:NAME' for each.
ready(#state{id = Id, tools = Tools, caps = Extra, registered = Reg} = State) ->
    Names = [N || #{<<"name">> := N} <- Tools, is_binary(N), N =/= <<>>],
    _ = [erlmcp_flow_mcp_tools:declare(N, T) || #{<<"name">> := N} = T <- Tools, is_binary(N)],
    %% `mcp_server' as well: a server with no tools (yet) is still an agent
    Caps = lists:usort([<<"mcp_server">> | [<<"tool:", N/binary>> || N <- Names] ++ Extra]),
    _ = Reg andalso (ok =:= erlmcp_flow:unregister_agent(Id)),
    case erlmcp_flow:register_agent(Id, self(), Caps) of
        ok ->
            [gen_server:reply(W, ok) || W <- State#state.waiters],
            set_level(State#state{phase = ready, registered = true, waiters = [],
                                  backoff = ?MIN_BACKOFF});
        Other ->
            {error, Why} = Other,
            logger:error("erlmcp_flow: MCP server ~ts cannot be registered: ~0p", [Id, Why]),
            [gen_server:reply(W, {error, Why}) || W <- State#state.waiters],
            State#state{phase = ready, registered = false, waiters = [], last_error = Why}
    end.

%% A task routed to this server: `tools/call'.
execute_task(#{tool := Name} = Task, Ctx, From, Ref, #state{phase = ready} = State) when is_binary(Name) ->
    Args = maps:get(arguments, Task, #{}),
    Id = State#state.next_id,
    {Meta, Relay} = case Task of
                        #{mcp := #{relay := {P, R}} = Mcp} when is_pid(P) ->
                            Token = maps:get(progress_token, Mcp, undefined),
                            {[{progressToken, Id} || Token =/= undefined],
                             #{relay => {P, R}, token => Token}};
                        _ ->
                            {[], none}
                    end,
    Trace = erlmcp_flow_correlation_tracker:trace_headers(Ctx),
    State1 = request(<<"tools/call">>, #{name => Name, arguments => Args,
                                         '_meta' => maps:merge(Trace, maps:from_list(Meta))},
                     {task, From, Ref}, State),
    case maps:is_key(Id, State1#state.pending) of
        true ->
            Relays = case Relay of
                         none -> State1#state.relays;
                         _ -> (State1#state.relays)#{Id => Relay}
                     end,
            State1#state{by_ref = (State1#state.by_ref)#{Ref => Id}, relays = Relays};
        false -> State1
    end;
execute_task(#{tool := _}, _Ctx, From, Ref, #state{phase = restarting, id = Id} = State) ->
    From ! {task_result, Ref, {error, {server_restarting, Id}}},
    State;
execute_task(#{tool := _}, _Ctx, From, Ref, State) ->
    From ! {task_result, Ref, {error, {server_not_ready, State#state.phase}}},
    State;
execute_task(Task, _Ctx, From, Ref, State) ->
    From ! {task_result, Ref, {reject, {bad_task, Task, <<"an MCP server takes #{tool := Name, arguments := Args}">>}}},
    State.

%% A request to the server; the answer comes to `For'.
request(Method, Params, For, #state{next_id = Id, pending = P} = State) ->
    Msg = {request, Id, Method, Params},
    case send(Msg, State) of
        {ok, State1} ->
            State1#state{next_id = Id + 1, pending = P#{Id => For}};
        {error, Why, State1} ->
            case For of
                {task, From, Ref} ->
                    From ! {task_result, Ref, {reject, {unencodable_task, Why}}},
                    State1#state{next_id = Id + 1};
                _ ->
                    down(Why, State1)
            end
    end.

notify(Method, Params, State) ->
    case send({notification, Method, Params}, State) of
        {ok, State1} -> State1;
        {error, _, State1} -> State1
    end.

respond(Id, Outcome, State) ->
    case send({response, Id, Outcome}, State) of
        {ok, State1} -> State1;
        {error, _, State1} -> State1
    end.

send(Msg, #state{port = Port} = State) when is_port(Port) ->
    case erlmcp_flow_jsonrpc:encode(Msg) of
        {ok, Bin} ->
            _ = catch port_command(Port, [Bin, $\n]),
            {ok, State};
        {error, Why} ->
            {error, Why, State}
    end;
send(Msg, #state{spec = #{url := Url}, session = Session} = State) ->
    case erlmcp_flow_jsonrpc:encode(Msg) of
        {ok, Bin} ->
            Headers = [{"accept", "application/json, text/event-stream"},
                       {"mcp-protocol-version", binary_to_list(?VERSION)}
                       | [{"mcp-session-id", binary_to_list(Session)} || is_binary(Session)]],
            %% streamed: an event stream's messages are read as they come
            %% (a server's request during a call waits for its answer)
            {ok, ReqId} = httpc:request(post, {text(Url), Headers, "application/json", Bin},
                                        [{timeout, 600000} | tls(State#state.spec)],
                                        [{sync, false}, {body_format, binary}, {stream, self}],
                                        State#state.httpc),
            For = case Msg of
                      {request, Id, _, _} -> Id;
                      _ -> none
                  end,
            {ok, State#state{streams = (State#state.streams)#{ReqId => #{for => For, buf => <<>>,
                                                                          sse => false}}}};
        {error, Why} ->
            {error, Why, State}
    end;
send(_Msg, State) ->
    {error, not_connected, State}.

%% httpc's options for an https URL: the server's certificate verified
%% (against the spec's cacertfile, else the system's CA certificates) and
%% its name checked against the URL's host; a client certificate if given.
tls(#{url := Url} = Spec) ->
    case uri_string:parse(text(Url)) of
        #{scheme := "https", host := Host} ->
            Tls = maps:get(tls, Spec, #{}),
            Verify = case maps:get(verify, Tls, verify_peer) of
                         verify_none ->
                             [{verify, verify_none}];
                         verify_peer ->
                             [{verify, verify_peer},
                              {server_name_indication, Host},
                              {customize_hostname_check,
                               [{match_fun, public_key:pkix_verify_hostname_match_fun(https)}]}
                              | case maps:get(cacertfile, Tls, undefined) of
                                    undefined -> [{cacerts, public_key:cacerts_get()}];
                                    F -> [{cacertfile, text(F)}]
                                end]
                     end,
            Client = [{K, text(maps:get(K, Tls))} || K <- [certfile, keyfile], maps:is_key(K, Tls)],
            [{ssl, Verify ++ Client}];
        _ ->
            []
    end.

%% A streamed Streamable HTTP answer begins: the session id, and whether it
%% is an event stream.
stream_start(ReqId, Headers, #state{streams = St} = State) ->
    State1 = case proplists:get_value("mcp-session-id", Headers) of
                 undefined -> State;
                 Sid -> State#state{session = list_to_binary(Sid)}
             end,
    Sse = case proplists:get_value("content-type", Headers, "") of
              "text/event-stream" ++ _ -> true;
              _ -> false
          end,
    case St of
        #{ReqId := S} -> State1#state{streams = St#{ReqId := S#{sse := Sse}}};
        _ -> State1
    end.

%% More of it: each whole event's data is a message (attributed to the
%% call the request carried); JSON waits for the end.
stream_part(ReqId, Part, #state{streams = St} = State) ->
    case St of
        #{ReqId := #{sse := true, buf := Buf, for := For} = S} ->
            {Events, Rest} = events(<<Buf/binary, Part/binary>>),
            messages(For, Events, State#state{streams = St#{ReqId := S#{buf := Rest}}});
        #{ReqId := #{buf := Buf} = S} when byte_size(Buf) + byte_size(Part) =< ?MAX_LINE ->
            State#state{streams = St#{ReqId := S#{buf := <<Buf/binary, Part/binary>>}}};
        #{ReqId := S} ->
            %% past the bound: dropped
            State#state{streams = St#{ReqId := S#{buf := <<>>}}};
        _ ->
            State
    end.

stream_end(ReqId, #state{streams = St} = State) ->
    case maps:take(ReqId, St) of
        {#{sse := false, buf := Buf, for := For}, St1} ->
            messages(For, [Buf], State#state{streams = St1});
        {#{buf := Buf, for := For}, St1} ->
            %% an event the stream's end closed
            {Events, _} = events(<<Buf/binary, "\n\n">>),
            messages(For, Events, State#state{streams = St1});
        error ->
            State
    end.

%% The messages of the answer to the call `For', read knowing which call
%% they came with (session/1).
messages(For, Msgs, State) ->
    State1 = lists:foldl(fun message/2, State#state{current = For}, Msgs),
    State1#state{current = none}.

%% Whole events of an event stream (their data lines joined) and the rest.
events(Bin0) ->
    Bin = binary:replace(Bin0, <<"\r\n">>, <<"\n">>, [global]),
    case binary:split(Bin, <<"\n\n">>) of
        [Event, Rest] ->
            {More, Left} = events(Rest),
            Data = [D || L <- binary:split(Event, <<"\n">>, [global]),
                         <<"data:", D0/binary>> <- [L], D <- [space_off(D0)]],
            case Data of
                [] -> {More, Left};
                _ -> {[iolist_to_binary(lists:join(<<"\n">>, Data)) | More], Left}
            end;
        [Partial] when byte_size(Partial) > ?MAX_LINE ->
            {[], <<>>};
        [Partial] ->
            {[], Partial}
    end.

%% A data line's one leading space (SSE), by bytes: the line need not be UTF-8.
space_off(<<" ", D/binary>>) -> D;
space_off(D) -> D.

%% A Streamable HTTP answer: JSON, or an event stream whose `data' lines
%% carry messages; the session id from the first answer.
http_result({{_, Status, _}, Headers, Body}, State) when Status >= 200, Status < 300 ->
    State1 = case proplists:get_value("mcp-session-id", Headers) of
                 undefined -> State;
                 Sid -> State#state{session = list_to_binary(Sid)}
             end,
    case proplists:get_value("content-type", Headers, "") of
        "text/event-stream" ++ _ ->
            {Events, _} = events(<<Body/binary, "\n\n">>),
            lists:foldl(fun message/2, State1, Events);
        _ ->
            message(Body, State1)
    end;
http_result({{_, Status, _}, _, _}, State) ->
    down({http_status, Status}, State);
http_result({error, Why}, State) ->
    down({http_error, Why}, State);
http_result(_Other, State) ->
    State.
