%% @private
%% @doc One JSON-RPC connection over TCP (or TLS): newline-delimited messages.
%%
%% Requests are served concurrently, each message by a process of its own,
%% so a client may pipeline and its responses come back as they are ready,
%% carrying their ids. Writes go through this process only. What a client
%% can make the node hold is bounded:
%%
%% <ul>
%% <li>at most `max_in_flight' messages of one connection are served at once;
%%   at the bound the connection stops reading (the client waits in its own
%%   TCP window) until one is answered;</li>
%% <li>on the node, at most `transports.max_in_flight' messages and
%%   `transports.max_in_flight_bytes' bytes of them are served at once (every
%%   connection together): past either a message is answered -32002
%%   (`Overloaded') at once;</li>
%% <li>a line past `transports.max_message_bytes' is answered -32012 and the
%%   connection closed (the stream cannot be resynchronised); a line must
%%   arrive whole within `request_timeout_ms' of its first byte, however
%%   slowly it drips;</li>
%% <li>a client that does not read its answers is cut off once a write has
%%   been blocked for 5 s;</li>
%% <li>every message counts against the listener's per-client rate
%%   (`rate_limit'): past it the answer is -32002 with `data.reason'
%%   `rate_limit'.</li>
%% </ul>
%%
%% With a token, the first message must be `flow.authenticate' within
%% `auth_timeout_ms' of the connection's start (bytes arriving do not extend
%% it), and its line may be 4 KiB at most; until then the connection sits in
%% the listener's pool of unauthenticated connections, where a newcomer takes
%% the place of the oldest, so they never take the places of authenticated
%% clients. A client that shuts down its sending side still gets the answers
%% to what it sent (its last line may end at the end of the stream), then the
%% connection closes.
%%
%% A connection that calls `flow.register_agent' becomes that agent (at most
%% `max_agents' of them): this process is the agent's pid in the registry,
%% and each task reaches the client as a request `flow.execute_task'
%% `{"task", "trace": {"traceparent", "tracestate"?}, "agent_id"}'; the
%% client's response completes the attempt (`{ok, Result}', or `{error,
%% {rpc_error, Code, Message}}'); a task the caller stops waiting for is
%% cancelled with the notification `flow.cancel_task' `{"id"}'. Only this
%% connection may unregister its agents; an id a local agent of the node has
%% held is never registered from the network. When the connection drops, the
%% registry sees this process die: its agents go, and their tasks in flight
%% fail as `agent_down' and are retried elsewhere.
-module(erlmcp_flow_rpc_tcp_conn).
-behaviour(gen_server).
-behaviour(erlmcp_flow_listener).

-export([start_link/2]).
-export([serve/2]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

%% The longest line before authentication (the flow.authenticate request).
-define(MAX_AUTH_LINE, 4096).
-define(SEND_TIMEOUT, 5000).

-record(state, {name :: atom(),
                limits :: map(),
                socket :: erlmcp_flow_socket:socket() | undefined,
                tags :: {atom(), atom(), atom()} | undefined,
                ip :: inet:ip_address() | undefined,
                %% the listener's budgets (erlmcp_flow_listener_server:ctx())
                ctx = #{rate_limit => infinity} :: map(),
                buf = <<>> :: binary(),
                authed = false :: boolean(),
                next_id = 1 :: pos_integer(),
                %% tasks sent to the client: JSON-RPC id => {From, Ref}
                pending = #{} :: #{integer() => {reference() | pid(), reference()}},
                %% the same by task reference, for cancellation
                by_ref = #{} :: #{reference() => integer()},
                %% messages being served, and the node's bytes they hold
                workers = 0 :: non_neg_integer(),
                %% answers ready, newest first, written together by `flush'
                out = [] :: [iodata()],
                %% the client shut down its side: answer, then close
                closing = false :: boolean(),
                reading = false :: boolean(),
                agents = #{} :: #{binary() => true},
                idle :: reference() | undefined,
                %% the deadline of the line (or authentication) arriving
                line_timer :: reference() | undefined,
                %% when the client last sent anything (monotonic ms)
                last_seen = 0 :: integer()}).

-spec start_link(atom(), map()) -> {ok, pid()}.
start_link(Name, Limits) ->
    gen_server:start_link(?MODULE, {Name, Limits}, []).

-spec serve(pid(), erlmcp_flow_socket:socket()) -> ok.
serve(Pid, Socket) ->
    gen_server:cast(Pid, {serve, Socket}).

-spec init({atom(), map()}) -> {ok, #state{}}.
init({Name, Limits}) ->
    %% the codec's limits, read once for the connection
    process_flag(trap_exit, true),
    {ok, #state{name = Name, limits = Limits#{codec => erlmcp_flow_jsonrpc:limits()},
                authed = maps:get(token, erlmcp_flow_rpc_tcp:config()) =:= undefined}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({register, Id, Caps, Opts}, _From, #state{agents = Agents, limits = Limits} = State) ->
    Max = maps:get(max_agents, Limits),
    case map_size(Agents) >= Max andalso not is_map_key(Id, Agents) of
        true ->
            {reply, {error, {too_many_agents, Max}}, State};
        false ->
            case erlmcp_flow_registry:register_network_agent(Id, self(), Caps, Opts) of
                ok -> {reply, ok, State#state{agents = Agents#{Id => true}}};
                {error, _} = E -> {reply, E, State}
            end
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_cast({serve, Socket0}, #state{name = Name, limits = Limits} = State0) ->
    case erlmcp_flow_socket:handshake(Socket0, maps:get(auth_timeout_ms, Limits)) of
        {ok, Socket} ->
            State = State0#state{socket = Socket, tags = erlmcp_flow_socket:tags(Socket),
                                 ip = ip(Socket)},
            Pool = case State#state.authed of
                       true -> busy;
                       false -> unauthenticated
                   end,
            case erlmcp_flow_listener_server:enter(Name, State#state.ip, Pool) of
                {ok, Ctx} ->
                    ok = erlmcp_flow_socket:setopts(
                           Socket, [binary, {packet, raw}, {send_timeout, ?SEND_TIMEOUT},
                                    {delay_send, true}, {send_timeout_close, true}
                                    | [{exit_on_close, false} || is_port(Socket)]]),
                    State1 = case State#state.authed of
                                 true -> State;
                                 %% authenticated in time, or closed
                                 false -> deadline(State, auth_timeout_ms)
                             end,
                    {noreply, read(idle_timer(seen(State1#state{ctx = Ctx})))};
                full ->
                    send_now(State, error_line(-32000, <<"Too many connections">>)),
                    {stop, normal, State}
            end;
        {error, _} ->
            erlmcp_flow_socket:close(Socket0),
            {stop, normal, State0}
    end;
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_info({Tag, S, Data}, #state{socket = S, tags = {Tag, _, _}, buf = Buf} = State) ->
    lines(seen(State#state{buf = <<Buf/binary, Data/binary>>, reading = false}));
handle_info({Tag, S}, #state{socket = S, tags = {_, Tag, _}} = State) ->
    %% the client is done sending: what it sent is answered, then we close
    eof(State#state{closing = true, reading = false});
handle_info({Tag, S, _}, #state{socket = S, tags = {_, _, Tag}} = State) ->
    {stop, normal, State};
handle_info({erlmcp_flow_listener, close}, State) ->
    {stop, normal, State};
handle_info({reply, _Size, Bin}, #state{workers = W, out = Out} = State) ->
    %% answers that arrive together leave in one write: the first asks for
    %% a flush, which comes after every message already in the mailbox
    Out1 = case Bin of
               <<>> -> Out;
               _ -> [[Bin, $\n] | Out]
           end,
    _ = Out =:= [] andalso Out1 =/= [] andalso (self() ! flush),
    done_or_more(State#state{workers = W - 1, out = Out1});
handle_info(flush, State) ->
    case flush(State) of
        {ok, State1} -> done_or_more(State1);
        closed -> {stop, normal, State}
    end;
handle_info({execute_task, Task, Ctx, From, Ref}, State) ->
    case execute_task(Task, Ctx, From, Ref, State) of
        {ok, State1} -> {noreply, State1};
        closed -> {stop, normal, State}
    end;
handle_info({cancel_task, Ref}, #state{by_ref = ByRef, pending = P} = State) ->
    case maps:take(Ref, ByRef) of
        {Id, ByRef1} ->
            {ok, N} = erlmcp_flow_jsonrpc:encode({notification, <<"flow.cancel_task">>, #{id => Id}}),
            case send_now(State, [N, $\n]) of
                ok -> {noreply, State#state{by_ref = ByRef1, pending = maps:remove(Id, P)}};
                closed -> {stop, normal, State}
            end;
        error ->
            {noreply, State}
    end;
handle_info({erlmcp_flow_unregistered, Id}, #state{agents = Agents} = State) ->
    {noreply, State#state{agents = maps:remove(Id, Agents)}};
handle_info({timeout, T, line}, #state{line_timer = T} = State) ->
    %% a line (or the authentication) that did not arrive in time
    {stop, normal, State};
handle_info({timeout, T, idle}, #state{idle = T, last_seen = Last,
                                       limits = #{idle_timeout_ms := Ms}} = State) ->
    %% a client connection with nothing to do; an agent's stays
    Idle = erlang:monotonic_time(millisecond) - Last,
    if
        Idle < Ms -> {noreply, idle_timer(State, Ms - Idle)};
        State#state.workers =:= 0, map_size(State#state.agents) =:= 0 -> {stop, normal, State};
        true -> {noreply, idle_timer(State)}
    end;
handle_info({'EXIT', _, _}, State) ->
    %% a worker's end is its reply; the listener's supervisor stops us
    %% through the gen_server's parent handling
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{socket = S}) ->
    _ = S =/= undefined andalso erlmcp_flow_socket:close(S),
    ok.

%%====================================================================
%% Lines
%%====================================================================

%% Every whole line of the buffer this connection may serve now, then read
%% more (or wait for room, or close).
lines(#state{buf = Buf} = State) ->
    case binary:split(Buf, <<"\n">>) of
        [Line, Rest] ->
            case room(State) of
                true ->
                    case line(trim_cr(Line), State#state{buf = Rest}) of
                        {ok, State1} -> lines(no_deadline(State1));
                        {stop, State1} -> {stop, normal, State1}
                    end;
                false ->
                    %% the connection's bound: read nothing until a message
                    %% is answered (a reply runs this again)
                    {noreply, State}
            end;
        [Partial] ->
            Max = max_line(State),
            case byte_size(Partial) > Max of
                true ->
                    send_now(State, [erlmcp_flow_jsonrpc:too_large(Max, byte_size(Partial)), $\n]),
                    {stop, normal, State};
                false when State#state.closing ->
                    eof(State);
                false ->
                    State1 = case Partial of
                                 <<>> -> no_deadline(State);
                                 _ -> line_deadline(State)
                             end,
                    {noreply, read(State1)}
            end
    end.

%% The stream ended: a last line without its newline is a line; once every
%% message is answered the connection closes.
eof(#state{buf = Buf, authed = true} = State) when Buf =/= <<>> ->
    case room(State) of
        true ->
            case line(trim_cr(Buf), State#state{buf = <<>>}) of
                {ok, State1} -> done_or_more(State1);
                {stop, State1} -> {stop, normal, State1}
            end;
        false ->
            {noreply, State}
    end;
eof(State) ->
    done_or_more(State#state{buf = <<>>}).

%% After a message is answered: more lines if any wait, the end if the
%% client is gone and nothing is left.
done_or_more(#state{closing = true, workers = 0, buf = <<>>, out = []} = State) ->
    {stop, normal, State};
done_or_more(#state{closing = true, buf = Buf} = State) when Buf =/= <<>> ->
    eof(State);
done_or_more(#state{closing = true} = State) ->
    {noreply, State};
done_or_more(#state{reading = false} = State) ->
    lines(State);
done_or_more(State) ->
    {noreply, State}.

room(#state{workers = W, limits = #{max_in_flight := Max}}) ->
    W < Max.

max_line(#state{authed = false}) -> ?MAX_AUTH_LINE;
max_line(#state{limits = #{max_body_bytes := Max}}) -> Max.

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
            serve_line(Decoded, byte_size(Line), State1)
    end.

%% A message with requests: refused at once past the client's rate or the
%% node's budget, else served by a process of its own.
serve_line(Decoded, Size, #state{ctx = Ctx, ip = Ip} = State) ->
    case erlmcp_flow_listener_server:allow(Ctx, Ip) of
        false ->
            {ok, queue_out(overloaded(Decoded, <<"rate_limit">>), State)};
        true ->
            case erlmcp_flow_listener_server:acquire(Ctx, Size) of
                overloaded ->
                    {ok, queue_out(overloaded(Decoded, <<"node_in_flight">>), State)};
                ok ->
                    Conn = self(),
                    %% linked: a request's process goes with its connection
                    %% (killed with it); it gives its bytes back itself, so a
                    %% connection gone before the answer leaves nothing held
                    _ = spawn_link(fun() ->
                                           try serve_requests(Conn, Size, Decoded)
                                           after erlmcp_flow_listener_server:release(Ctx, Size)
                                           end
                                   end),
                    {ok, State#state{workers = State#state.workers + 1}}
            end
    end.

%% -32002 for every request of the message (none is served).
overloaded(Decoded, Why) ->
    Refuse = fun(_M, _P) -> {error, -32002, <<"Overloaded">>, #{reason => Why}} end,
    case erlmcp_flow_jsonrpc:responses(Decoded, Refuse) of
        {reply, Bin} -> Bin;
        noreply -> <<>>
    end.

queue_out(<<>>, State) ->
    State;
queue_out(Bin, #state{out = Out} = State) ->
    _ = Out =:= [] andalso (self() ! flush),
    State#state{out = [[Bin, $\n] | Out]}.

serve_requests(Conn, Size, Decoded) ->
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
    Conn ! {reply, Size, Out}.

%% The methods that concern the connection itself; the rest as every
%% transport serves them.
request(Conn, <<"flow.register_agent">>, #{<<"agent_id">> := Id, <<"capabilities">> := Caps} = P) ->
    Opts = #{weight => maps:get(<<"weight">>, P, 1), notify_unregister => true},
    case catch gen_server:call(Conn, {register, Id, Caps, Opts}, infinity) of
        ok -> {ok, #{registered => true}};
        {error, Reason} -> reason_error(Reason);
        {'EXIT', _} -> {error, erlmcp_flow_jsonrpc:code(internal_error), <<"Internal error">>, undefined}
    end;
request(_Conn, <<"flow.register_agent">>, _P) ->
    {error, erlmcp_flow_jsonrpc:code(invalid_params), <<"Invalid params">>,
     #{reason => <<"flow.register_agent takes {\"agent_id\", \"capabilities\": [...], \"weight\"?}">>}};
request(_Conn, <<"flow.authenticate">>, _P) ->
    {ok, #{authenticated => true}};
request(Conn, Method, Params) ->
    erlmcp_flow_rpc:handle(Method, Params, #{transport => tcp, conn => Conn}).

reason_error(Reason) ->
    {error, erlmcp_flow_rpc:error_code(Reason), <<"Registration refused">>,
     #{reason => iolist_to_binary(io_lib:format("~0p", [Reason]))}}.

%% With a token, the first message must be flow.authenticate.
authenticate({single, {request, Id, <<"flow.authenticate">>, #{<<"token">> := Given}}},
             #state{name = Name} = State)
  when is_binary(Given) ->
    Token = maps:get(token, erlmcp_flow_rpc_tcp:config()),
    case byte_size(Given) =:= byte_size(Token) andalso crypto:hash_equals(Given, Token) of
        true ->
            case erlmcp_flow_listener_server:authenticated(Name) of
                ok ->
                    _ = send_now(State, [erlmcp_flow_jsonrpc:response(Id, {ok, #{authenticated => true}}),
                                         $\n]),
                    {ok, no_deadline(State#state{authed = true})};
                full ->
                    _ = send_now(State, error_line(-32000, <<"Too many connections">>)),
                    {stop, State}
            end;
        false ->
            _ = send_now(State, error_line(-32000, <<"Unauthorized">>)),
            {stop, State}
    end;
authenticate(_, State) ->
    _ = send_now(State, error_line(-32000, <<"Unauthorized: flow.authenticate first">>)),
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
            case send_now(State, [Bin, $\n]) of
                ok -> {ok, State#state{next_id = Id + 1, pending = P#{Id => {From, Ref}},
                                       by_ref = ByRef#{Ref => Id}}};
                closed -> closed
            end;
        {error, {unencodable, Why}} ->
            From ! {task_result, Ref, {reject, {unencodable_task, Why}}},
            {ok, State}
    end.

%%====================================================================
%% Socket and timers
%%====================================================================

%% Reads once more, unless reading already or the client is done.
read(#state{reading = true} = State) -> State;
read(#state{closing = true} = State) -> State;
read(#state{socket = S} = State) ->
    ok = erlmcp_flow_socket:setopts(S, [{active, once}]),
    State#state{reading = true}.

flush(#state{out = []} = State) ->
    {ok, State};
flush(#state{out = Out} = State) ->
    case send_now(State, lists:reverse(Out)) of
        ok -> {ok, State#state{out = []}};
        closed -> closed
    end.

%% `closed' when the write failed: blocked past the send timeout (a client
%% that does not read is cut off), or the connection gone.
send_now(#state{socket = S}, Data) ->
    case erlmcp_flow_socket:send(S, Data) of
        ok -> ok;
        {error, _} -> closed
    end.

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
    State#state{idle = erlang:start_timer(Ms, self(), idle)}.

%% A line has begun: it must be whole within request_timeout_ms (or, before
%% authentication, the authentication deadline holds).
line_deadline(#state{line_timer = undefined, authed = true} = State) ->
    deadline(State, request_timeout_ms);
line_deadline(State) ->
    State.

no_deadline(#state{authed = false} = State) ->
    State;
no_deadline(#state{line_timer = undefined} = State) ->
    State;
no_deadline(#state{line_timer = T} = State) ->
    _ = erlang:cancel_timer(T),
    State#state{line_timer = undefined}.

deadline(#state{limits = Limits} = State, Key) ->
    State#state{line_timer = erlang:start_timer(maps:get(Key, Limits), self(), line)}.

seen(State) ->
    State#state{last_seen = erlang:monotonic_time(millisecond)}.

ip(Socket) ->
    case erlmcp_flow_socket:peername(Socket) of
        {ok, {Ip, _}} -> Ip;
        {error, _} -> undefined
    end.
