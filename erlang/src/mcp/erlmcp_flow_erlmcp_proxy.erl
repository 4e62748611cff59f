%% @private
%% @doc The agent of one erlmcp server (see `erlmcp_flow_erlmcp'): an erlmcp
%% transport on one side, an erlmcp_flow agent on the other.
-module(erlmcp_flow_erlmcp_proxy).
-behaviour(gen_server).

-export([start_link/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).


-define(PROTOCOL_VERSION, <<"2025-11-25">>).
-define(INIT_TIMEOUT, 5000).
%% erlmcp_server's answer to a second initialize (MCP_ERROR_NOT_INITIALIZED)
-define(ALREADY_INITIALIZED, -32005).
%% The errors by which a server refuses the caller's tools/call rather than
%% fails it: JSON-RPC's invalid request and params, and erlmcp_server's tool
%% not found (MCP_ERROR_TOOL_NOT_FOUND), arguments its schema refuses
%% (MCP_ERROR_VALIDATION_FAILED) and message too large
%% (MCP_ERROR_MESSAGE_TOO_LARGE). Answered as is, never retried, never held
%% against the server.
-define(CALLERS_MISTAKE(Code), (Code =:= -32600 orelse Code =:= -32602 orelse Code =:= -32002
                                orelse Code =:= -32007 orelse Code =:= -32012)).

-record(state, {server_id :: atom() | binary(),
                server :: pid(),
                transport :: binary(),
                next_id = 2 :: pos_integer(),
                %% tools/call requests out: JSON-RPC id => {From, Ref}
                pending = #{} :: #{integer() => {reference() | pid(), reference()}},
                by_ref = #{} :: #{reference() => integer()},
                %% unregistered: answers its tasks in flight, takes no more,
                %% then stops
                leaving = false :: boolean()}).

-spec start_link(atom() | binary(), pid(), [binary()]) -> {ok, pid()} | {error, term()}.
start_link(ServerId, ServerPid, Capabilities) ->
    gen_server:start_link(?MODULE, {ServerId, ServerPid, Capabilities}, []).

-spec init({atom() | binary(), pid(), [binary()]}) -> {ok, #state{}} | {stop, term()}.
init({ServerId, Server, Capabilities}) ->
    %% terminate/2 runs when the supervisor stops it: the transport goes
    process_flag(trap_exit, true),
    Transport = <<"erlmcp_flow:", (id(ServerId))/binary>>,
    case (erlmcp_flow_erlmcp:registry()):register_transport(Transport, self(), #{server_id => ServerId}) of
        ok ->
            MRef = erlang:monitor(process, Server),
            State = #state{server_id = ServerId, server = Server, transport = Transport},
            Started = case initialize(State, MRef) of
                          ok ->
                              erlmcp_flow:register_agent(id(ServerId), self(), Capabilities,
                                                         #{notify_unregister => true});
                          {error, _} = E ->
                              E
                      end,
            case Started of
                ok ->
                    {ok, State};
                {error, Reason} ->
                    unregister_transport(Transport),
                    {stop, Reason}
            end;
        {error, Reason} ->
            {stop, {register_transport, Reason}}
    end.

%% MCP's handshake: initialize (id 1), its answer, then initialized. A
%% server that dies meanwhile answers at once.
initialize(#state{server_id = Id, server = Server} = State, MRef) ->
    send(State, {request, 1, <<"initialize">>,
                 #{protocolVersion => ?PROTOCOL_VERSION, capabilities => #{},
                   clientInfo => #{name => <<"erlmcp_flow">>, version => vsn()}}}),
    receive
        {mcp_response, Id, Json} ->
            case erlmcp_flow_jsonrpc:decode(Json) of
                {single, {response, 1, {ok, _}}} ->
                    send(State, {notification, <<"notifications/initialized">>, undefined}),
                    ok;
                {single, {response, 1, {error, ?ALREADY_INITIALIZED, _, _}}} ->
                    %% erlmcp_server keeps one session for every transport:
                    %% initialized before (by an earlier proxy of this
                    %% server, or another client), it takes calls as it is
                    ok;
                {single, {response, 1, {error, Code, Msg, _}}} ->
                    {error, {mcp_initialize, Code, Msg}};
                Other ->
                    {error, {mcp_initialize, Other}}
            end;
        {'DOWN', MRef, process, Server, Why} ->
            {error, {mcp_initialize, {server_down, Why}}}
    after ?INIT_TIMEOUT ->
            {error, {mcp_initialize, timeout}}
    end.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
handle_info({execute_task, _Task, _Ctx, From, Ref}, #state{leaving = true} = State) ->
    %% decided just before the unregistration: the agent's absence, not
    %% the caller's error (retried elsewhere)
    From ! {task_result, Ref, {error, agent_unregistered}},
    {noreply, State};
handle_info({execute_task, Task, _Ctx, From, Ref}, #state{next_id = N} = State) ->
    case tool_call(Task) of
        {ok, Params} ->
            send(State, {request, N, <<"tools/call">>, Params}),
            {noreply, State#state{next_id = N + 1,
                                  pending = (State#state.pending)#{N => {From, Ref}},
                                  by_ref = (State#state.by_ref)#{Ref => N}}};
        error ->
            %% a task that names no tool is the caller's error: answered at
            %% once, never retried, never held against the server
            From ! {task_result, Ref, {reject, {badarg, task}}},
            {noreply, State}
    end;
handle_info({mcp_response, Id, Json}, #state{server_id = Id} = State) ->
    leave_when_done(answer(erlmcp_flow_jsonrpc:decode(Json), State));
handle_info({erlmcp_flow_unregistered, _AgentId}, State) ->
    leave_when_done(State#state{leaving = true});
handle_info({cancel_task, Ref}, #state{by_ref = ByRef} = State) ->
    case maps:take(Ref, ByRef) of
        {N, ByRef1} ->
            send(State, {notification, <<"notifications/cancelled">>,
                         #{requestId => N, reason => <<"the caller stopped waiting">>}}),
            leave_when_done(State#state{by_ref = ByRef1, pending = maps:remove(N, State#state.pending)});
        error ->
            {noreply, State}
    end;
handle_info({'DOWN', _, process, Server, Why}, #state{server = Server} = State) ->
    {stop, {shutdown, {mcp_server_down, Why}}, State};
handle_info(_Info, State) ->
    {noreply, State}.

%% Unregistered and nothing in flight: stops (the transport goes with it).
leave_when_done(#state{leaving = true, pending = P} = State) when map_size(P) =:= 0 ->
    {stop, normal, State};
leave_when_done(State) ->
    {noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{transport = Transport}) ->
    unregister_transport(Transport).

%% erlmcp's registry forgets the transport (it does by itself when this
%% process dies; a registry that is gone has nothing to forget).
unregister_transport(Transport) ->
    try (erlmcp_flow_erlmcp:registry()):unregister_transport(Transport) of
        _ -> ok
    catch
        _:_ -> ok
    end.

answer({single, {response, N, Outcome}}, #state{pending = P, by_ref = ByRef} = State)
  when is_integer(N) ->
    case maps:take(N, P) of
        {{From, Ref}, P1} ->
            From ! {task_result, Ref, case Outcome of
                                          {ok, #{<<"isError">> := true} = Result} ->
                                              {reject, {tool_error, Result}};
                                          {ok, Result} -> {ok, Result};
                                          {error, Code, Msg, _} when ?CALLERS_MISTAKE(Code) ->
                                              {reject, {mcp_error, Code, Msg}};
                                          {error, Code, Msg, _} -> {error, {mcp_error, Code, Msg}}
                                      end},
            State#state{pending = P1, by_ref = maps:remove(Ref, ByRef)};
        error ->
            State
    end;
answer(_, State) ->
    State.

tool_call(#{<<"tool">> := Name} = Task) when is_binary(Name) ->
    {ok, #{name => Name, arguments => maps:get(<<"arguments">>, Task, #{})}};
tool_call(#{tool := Name} = Task) when is_binary(Name); is_atom(Name) ->
    {ok, #{name => Name, arguments => maps:get(arguments, Task, #{})}};
tool_call(_) ->
    error.

send(#state{server = Server, transport = T}, Message) ->
    {ok, Json} = erlmcp_flow_jsonrpc:encode(Message),
    Server ! {mcp_message, T, Json},
    ok.

id(Id) when is_binary(Id) -> Id;
id(Id) when is_atom(Id) -> atom_to_binary(Id);
id(Id) -> iolist_to_binary(io_lib:format("~0p", [Id])).

vsn() ->
    case application:get_key(erlmcp_flow, vsn) of
        {ok, V} -> list_to_binary(V);
        undefined -> <<"0">>
    end.
