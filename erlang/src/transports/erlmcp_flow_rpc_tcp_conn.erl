%% @private
%% @doc One JSON-RPC connection over TCP: newline-delimited messages.
%%
%% Requests are served concurrently, each message by a process of its own,
%% so a client may pipeline and its responses come back as they are ready,
%% carrying their ids. Writes go through this process only. A line past
%% `transports.max_message_bytes' is answered -32012 and the connection
%% closed (the stream cannot be resynchronised); a client that stops reading
%% is cut off after 5 s of blocked writes, and touches no other connection.
%%
%% A connection that calls `flow.register_agent' becomes that agent: this
%% process is the agent's pid in the registry, and each task reaches the
%% client as a request `flow.execute_task' `{"task", "trace": {"traceparent",
%% "tracestate"?}, "agent_id"}'; the client's response completes the attempt
%% (`{ok, Result}', or `{error, {rpc_error, Code, Message}}'); a task the
%% caller stops waiting for is cancelled with the notification
%% `flow.cancel_task' `{"id"}'. When the connection drops, the registry sees
%% this process die: its agents go, and their tasks in flight fail as
%% `agent_down' and are retried elsewhere.
-module(erlmcp_flow_rpc_tcp_conn).
-behaviour(gen_server).
-behaviour(erlmcp_flow_listener).

-export([start_link/2]).
-export([serve/2]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-record(state, {name :: atom(),
                limits :: map(),
                socket :: gen_tcp:socket() | undefined,
                buf = <<>> :: binary(),
                authed = false :: boolean(),
                next_id = 1 :: pos_integer(),
                %% tasks sent to the client: JSON-RPC id => {From, Ref}
                pending = #{} :: #{integer() => {reference() | pid(), reference()}},
                %% the same by task reference, for cancellation
                by_ref = #{} :: #{reference() => integer()},
                workers = 0 :: non_neg_integer(),
                %% answers ready, newest first, written together by `flush'
                out = [] :: [iodata()],
                timer :: reference() | undefined,
                %% when the client last sent anything (monotonic ms)
                last_seen = 0 :: integer()}).

-spec start_link(atom(), map()) -> {ok, pid()}.
start_link(Name, Limits) ->
    gen_server:start_link(?MODULE, {Name, Limits}, []).

-spec serve(pid(), gen_tcp:socket()) -> ok.
serve(Pid, Socket) ->
    gen_server:cast(Pid, {serve, Socket}).

-spec init({atom(), map()}) -> {ok, #state{}}.
init({Name, Limits}) ->
    %% the codec's limits, read once for the connection
    {ok, #state{name = Name, limits = Limits#{codec => erlmcp_flow_jsonrpc:limits()},
                authed = maps:get(token, erlmcp_flow_rpc_tcp:config()) =:= undefined}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_cast({serve, Socket}, #state{name = Name} = State0) ->
    State = State0#state{socket = Socket},
    case erlmcp_flow_listener_server:enter(Name) of
        ok ->
            %% a long-lived connection: never the one evicted for a newcomer
            erlmcp_flow_listener_server:busy(Name),
            ok = inet:setopts(Socket, [binary, {packet, raw}, {send_timeout, 5000}, {delay_send, true},
                                       {send_timeout_close, true}, {active, once}]),
            {noreply, idle_timer(seen(State))};
        full ->
            send(State, error_line(-32000, <<"Too many connections">>)),
            {stop, normal, State}
    end;
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_info({tcp, S, Data}, #state{socket = S, buf = Buf} = State) ->
    lines(<<Buf/binary, Data/binary>>, seen(State));
handle_info({erlmcp_flow_listener, close}, State) ->
    {stop, normal, State};
handle_info({tcp_closed, S}, #state{socket = S} = State) ->
    {stop, normal, State};
handle_info({tcp_error, S, _}, #state{socket = S} = State) ->
    {stop, normal, State};
handle_info({reply, <<>>}, #state{workers = W} = State) ->
    {noreply, State#state{workers = W - 1}};
handle_info({reply, Bin}, #state{workers = W, out = Out} = State) ->
    %% answers that arrive together leave in one write: the first asks for
    %% a flush, which comes after every message already in the mailbox
    Out =:= [] andalso (self() ! flush),
    {noreply, State#state{workers = W - 1, out = [[Bin, $\n] | Out]}};
handle_info(flush, #state{out = Out} = State) ->
    send(State, lists:reverse(Out)),
    {noreply, State#state{out = []}};
handle_info({execute_task, Task, Ctx, From, Ref}, State) ->
    {noreply, execute_task(Task, Ctx, From, Ref, State)};
handle_info({cancel_task, Ref}, #state{by_ref = ByRef, pending = P} = State) ->
    case maps:take(Ref, ByRef) of
        {Id, ByRef1} ->
            {ok, N} = erlmcp_flow_jsonrpc:encode({notification, <<"flow.cancel_task">>, #{id => Id}}),
            send(State, [N, $\n]),
            {noreply, State#state{by_ref = ByRef1, pending = maps:remove(Id, P)}};
        error ->
            {noreply, State}
    end;
handle_info({timeout, T, idle}, #state{timer = T, last_seen = Last,
                                       limits = #{idle_timeout_ms := Ms}} = State) ->
    %% a client connection with nothing to do; an agent's stays
    Idle = erlang:monotonic_time(millisecond) - Last,
    if
        Idle < Ms -> {noreply, idle_timer(State, Ms - Idle)};
        State#state.workers =:= 0 -> case has_agents() of
                                         false -> {stop, normal, State};
                                         true -> {noreply, idle_timer(State)}
                                     end;
        true -> {noreply, idle_timer(State)}
    end;
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Internal functions
%%====================================================================

%% Every whole line in `Buf', then wait for more.
lines(Buf, #state{limits = #{max_body_bytes := Max}} = State) ->
    case binary:split(Buf, <<"\n">>) of
        [Line, Rest] ->
            case line(trim_cr(Line), State) of
                {ok, State1} -> lines(Rest, State1);
                {stop, State1} -> {stop, normal, State1}
            end;
        [Partial] when byte_size(Partial) > Max ->
            send(State, [erlmcp_flow_jsonrpc:too_large(Max, byte_size(Partial)), $\n]),
            {stop, normal, State};
        [Partial] ->
            %% one packet at a time: what arrives meanwhile waits in the
            %% driver and comes as one message (fewer, larger reads)
            ok = inet:setopts(State#state.socket, [{active, once}]),
            {noreply, State#state{buf = Partial}}
    end.

trim_cr(Line) ->
    case byte_size(Line) of
        0 -> Line;
        N -> case binary:last(Line) of
                 $\r -> binary:part(Line, 0, N - 1);
                 _ -> Line
             end
    end.

line(<<>>, State) ->
    {ok, State};
line(Line, #state{authed = false} = State) ->
    authenticate(erlmcp_flow_jsonrpc:decode(Line), State);
line(Line, #state{limits = #{codec := Codec}} = State) ->
    Decoded = erlmcp_flow_jsonrpc:decode(Line, Codec),
    Items = case Decoded of
                {single, I} -> [I];
                {batch, Is} -> Is;
                {error, _} -> []
            end,
    %% the client's answers to our tasks first; then its requests, served
    %% by a process of their own
    State1 = lists:foldl(fun answer/2, State, [I || {response, _, _} = I <- Items]),
    case lists:any(fun(I) -> element(1, I) =/= response end, Items) of
        false ->
            {ok, State1};
        true ->
            Conn = self(),
            %% linked: a request's process goes with its connection
            _ = spawn_link(fun() -> serve_requests(Conn, Decoded) end),
            {ok, State1#state{workers = State1#state.workers + 1}}
    end.

serve_requests(Conn, Decoded) ->
    Handle = fun(M, P) -> request(Conn, M, P) end,
    Reply = try erlmcp_flow_jsonrpc:responses(Decoded, Handle)
            catch C:R ->
                    logger:error("erlmcp_flow: JSON-RPC request crashed: ~p:~p", [C, R]),
                    {reply, error_json(erlmcp_flow_jsonrpc:code(internal_error), <<"Internal error">>)}
            end,
    Out = case Reply of
              {reply, Bin} -> Bin;
              noreply -> <<>>
          end,
    Conn ! {reply, Out}.

%% The methods that concern the connection itself; the rest as every
%% transport serves them.
request(Conn, <<"flow.register_agent">>, #{<<"agent_id">> := Id, <<"capabilities">> := Caps} = P) ->
    Opts = maps:with([weight], #{weight => maps:get(<<"weight">>, P, 1)}),
    case erlmcp_flow:register_agent(Id, Conn, Caps, Opts) of
        ok -> {ok, #{registered => true}};
        {error, Reason} -> reason_error(Reason)
    end;
request(_Conn, <<"flow.register_agent">>, _P) ->
    {error, erlmcp_flow_jsonrpc:code(invalid_params), <<"Invalid params">>,
     #{reason => <<"flow.register_agent takes {\"agent_id\", \"capabilities\": [...], \"weight\"?}">>}};
request(_Conn, <<"flow.authenticate">>, _P) ->
    {ok, #{authenticated => true}};
request(_Conn, Method, Params) ->
    erlmcp_flow_rpc:handle(Method, Params, #{transport => tcp}).

reason_error(Reason) ->
    {error, erlmcp_flow_rpc:error_code(Reason), <<"Registration refused">>,
     #{reason => iolist_to_binary(io_lib:format("~0p", [Reason]))}}.

%% With a token, the first message must be flow.authenticate.
authenticate({single, {request, Id, <<"flow.authenticate">>, #{<<"token">> := Given}}}, State)
  when is_binary(Given) ->
    Token = maps:get(token, erlmcp_flow_rpc_tcp:config()),
    case byte_size(Given) =:= byte_size(Token) andalso crypto:hash_equals(Given, Token) of
        true ->
            send(State, [erlmcp_flow_jsonrpc:response(Id, {ok, #{authenticated => true}}), $\n]),
            {ok, State#state{authed = true}};
        false ->
            send(State, error_line(-32000, <<"Unauthorized">>)),
            {stop, State}
    end;
authenticate(_, State) ->
    send(State, error_line(-32000, <<"Unauthorized: flow.authenticate first">>)),
    {stop, State}.

%% The client's answer to a task we sent it.
answer({response, Id, Outcome}, #state{pending = P, by_ref = ByRef} = State) ->
    case maps:take(Id, P) of
        {{From, Ref}, P1} ->
            From ! {task_result, Ref, case Outcome of
                                          {ok, R} -> {ok, R};
                                          %% the client says the task itself is
                                          %% wrong: the caller's error, not the agent's
                                          {error, Code, Msg, _} when Code =:= -32602; Code =:= -32600 ->
                                              {reject, {rpc_error, Code, Msg}};
                                          {error, Code, Msg, _} -> {error, {rpc_error, Code, Msg}}
                                      end},
            State#state{pending = P1, by_ref = maps:remove(Ref, ByRef)};
        error ->
            State
    end.

%% A task routed to one of this connection's agents: a request to the client.
execute_task(Task, Ctx, From, Ref, #state{next_id = Id, pending = P, by_ref = ByRef} = State) ->
    Trace = erlmcp_flow_correlation_tracker:trace_headers(Ctx),
    Params = #{task => Task, trace => Trace, agent_id => maps:get(agent_id, Ctx, null)},
    case erlmcp_flow_jsonrpc:encode({request, Id, <<"flow.execute_task">>, Params}) of
        {ok, Bin} ->
            send(State, [Bin, $\n]),
            State#state{next_id = Id + 1, pending = P#{Id => {From, Ref}},
                        by_ref = ByRef#{Ref => Id}};
        {error, {unencodable, Why}} ->
            From ! {task_result, Ref, {reject, {unencodable_task, Why}}},
            State
    end.

has_agents() ->
    [] =/= [Id || {Id, Pid, _, _} <- erlmcp_flow_registry:list_agents(), Pid =:= self()].

send(#state{socket = S}, Data) ->
    _ = gen_tcp:send(S, Data),
    ok.

error_json(Code, Message) ->
    erlmcp_flow_jsonrpc:response(null, {error, Code, Message, undefined}).

error_line(Code, Message) ->
    [error_json(Code, Message), $\n].

%% The idle timer is set once for the whole timeout and, when it fires
%% early (the client sent something since), again for what is left: no
%% timer is touched per packet.
idle_timer(#state{limits = #{idle_timeout_ms := Ms}} = State) ->
    idle_timer(State, Ms).

idle_timer(State, Ms) ->
    State#state{timer = erlang:start_timer(Ms, self(), idle)}.

seen(State) ->
    State#state{last_seen = erlang:monotonic_time(millisecond)}.
