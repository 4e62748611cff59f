%% @private
%% @doc One connection of an `erlmcp_flow_http' listener: it reads requests
%% through the strict parser (`erlmcp_flow_http_parser', RFC 9112's
%% framing), has the handler answer each in turn, and keeps the connection
%% open between requests (HTTP/1.1 keep-alive) while the listener lets it.
%%
%% Reading is `{active, once}' and stops while a request is answered: a
%% client that pipelines waits in its own TCP window, and at most one
%% request (plus one read) is held in memory. Requests pipelined in one read
%% are answered in order. A client that shuts down its sending side after
%% its requests still gets their answers, then the connection closes.
%%
%% Timers: a request must arrive whole (line, headers and body, however
%% slowly its bytes come) within `request_timeout_ms' from its first byte
%% (for the first request, from the connection's start, the TLS handshake
%% included); a kept-alive connection waits `idle_timeout_ms' for the first
%% byte of its next request; a write blocked for 5 s (a client that does not
%% read) closes the connection. Past a timer the connection is closed.
%% After an error answer (400, 413, ...) the connection closes gracefully:
%% our side shut down, what the client still sends (the rest of a body past
%% the limit) read and dropped for up to 5 s and 64 MiB, so that the client
%% reads the answer instead of a reset.
%%
%% Every request counts against the listener's per-client rate: past it the
%% answer is 429 with a JSON-RPC overload error (-32002) and `Retry-After: 1'.
%%
%% A handler module answers each request: `Handler:handle(Method, Path,
%% Headers, Body, Ctx)' if it exports it (`Ctx': `listener', `peer' (`{Ip,
%% Port}'), `tls', `peercert' (DER, when the client sent a certificate)),
%% else `Handler:handle(Method, Path, Headers, Body)'; the query string comes
%% as the pseudo-header `:query'. A `HEAD' request gets the head of the GET
%% answer, no body. A handler may answer `{deferred, Produce}': `Produce'
%% runs in the connection's process with a stream function and returns a
%% whole answer, or `streamed' after it called `Stream({head, Status, Type,
%% Headers})' and `Stream({chunk, Data})' (each `ok', or `closed' once the
%% client is gone); a streamed answer is sent chunked (MCP's event streams).
-module(erlmcp_flow_http_conn).
-behaviour(gen_server).
-behaviour(erlmcp_flow_listener).

%% API
-export([start_link/2]).
-export([serve/2]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-define(MAX_BODY, 1048576).
-define(SEND_TIMEOUT, 5000).
%% After an error answer: what the client still sends is read and dropped
%% for at most this long and this many bytes.
-define(LINGER_MS, 5000).
-define(LINGER_BYTES, 67108864).

-record(state, {name :: atom(),
                handler :: module(),
                limits :: erlmcp_flow_http:limits(),
                socket :: erlmcp_flow_socket:socket() | undefined,
                tags :: {atom(), atom(), atom()} | undefined,
                parser :: erlmcp_flow_http_parser:parser() | undefined,
                ctx = #{} :: map(),
                %% the listener's budgets (erlmcp_flow_listener_server:ctx())
                budgets = #{rate_limit => infinity} :: map(),
                %% the request timer runs while a request is arriving, the
                %% idle timer between requests
                timer :: {request | idle, reference()} | undefined}).

-spec start_link(atom(), {module(), erlmcp_flow_http:limits()}) -> {ok, pid()}.
start_link(Name, {Handler, Limits}) ->
    gen_server:start_link(?MODULE, {Name, Handler, Limits}, []).

%% @doc Hands the connection its socket (after its ownership).
-spec serve(pid(), erlmcp_flow_socket:socket()) -> ok.
serve(Pid, Socket) ->
    gen_server:cast(Pid, {serve, Socket}).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init({atom(), module(), erlmcp_flow_http:limits()}) -> {ok, #state{}}.
init({Name, Handler, Limits0}) ->
    Limits = maps:merge(#{max_body_bytes => ?MAX_BODY}, Limits0),
    Parser = erlmcp_flow_http_parser:new(#{max_body => maps:get(max_body_bytes, Limits)}),
    {ok, #state{name = Name, handler = Handler, limits = Limits, parser = Parser}}.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_cast({serve, Socket0}, #state{name = Name, limits = #{request_timeout_ms := Ms}} = State0) ->
    State1 = request_timer(State0),
    case erlmcp_flow_socket:handshake(Socket0, Ms) of
        {ok, Socket} ->
            State = State1#state{socket = Socket, tags = erlmcp_flow_socket:tags(Socket),
                                 ctx = ctx(Name, Socket)},
            case erlmcp_flow_listener_server:enter(Name, ip(State), waiting) of
                {ok, Budgets} ->
                    ok = erlmcp_flow_socket:setopts(Socket, [binary, {packet, raw},
                                                             {send_timeout, ?SEND_TIMEOUT},
                                                             {send_timeout_close, true}
                                                             | half_close(Socket)]),
                    {noreply, next(State#state{budgets = Budgets})};
                full ->
                    respond(State, 503, "text/plain", <<"busy: every connection is serving\n">>,
                            close, []),
                    {stop, normal, State}
            end;
        {error, _} ->
            erlmcp_flow_socket:close(Socket0),
            {stop, normal, State1}
    end;
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_info({Tag, S, Data}, #state{socket = S, tags = {Tag, _, _}} = State) ->
    feed(Data, arriving(State));
handle_info({Tag, S}, #state{socket = S, tags = {_, Tag, _}} = State) ->
    %% the client closed (or shut down its side) with no whole request
    %% left unanswered: what it asked was answered as it came
    {stop, normal, State};
handle_info({Tag, S, _}, #state{socket = S, tags = {_, _, Tag}} = State) ->
    {stop, normal, State};
handle_info({erlmcp_flow_listener, close}, State) ->
    %% the listener needs this connection's place
    {stop, normal, State};
handle_info({timeout, T, _}, #state{timer = {_, T}} = State) ->
    {stop, normal, State};
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Requests
%%====================================================================

%% Bytes read: every whole request among them answered in turn, then more
%% read, or the connection closed.
feed(Data, #state{parser = P} = State) ->
    case erlmcp_flow_http_parser:parse(Data, P) of
        {request, Req, P1} ->
            State1 = done_arriving(State#state{parser = P1}),
            case answer(Req, State1) of
                {keep_alive, State2} -> feed(<<>>, State2);
                close -> {stop, normal, State1}
            end;
        {continue, P1} ->
            _ = erlmcp_flow_socket:send(State#state.socket, <<"HTTP/1.1 100 Continue\r\n\r\n">>),
            feed(<<>>, State#state{parser = P1});
        {more, P1} ->
            State1 = State#state{parser = P1},
            case erlmcp_flow_http_parser:started(P1) of
                true -> {noreply, next(arriving(State1))};
                false -> {noreply, next(idle_timer(State1))}
            end;
        {error, Status, Why} ->
            %% what the client still sends (a body past the limit) is read
            %% and dropped after the answer, so that it reads the answer
            %% instead of a reset
            respond(State, Status, "text/plain", <<Why/binary, "\n">>, linger, []),
            {stop, normal, State}
    end.

%% A whole request: rate, then the handler's answer; `{keep_alive, State}'
%% or `close' (the answer sent).
answer(#{method := M, path := P, query := Q, headers := H0, body := B} = Req, State) ->
    #state{name = Name, handler = Handler, ctx = Ctx} = State,
    erlmcp_flow_listener_server:busy(Name),
    H = [{<<":query">>, Q} || Q =/= <<>>] ++ H0,
    Answer = case erlmcp_flow_listener_server:allow(State#state.budgets, ip(State)) of
                 true -> handle(Handler, get_for_head(M), P, H, B, Ctx);
                 false -> overloaded()
             end,
    case Answer of
        {deferred, Produce} when M =/= 'HEAD' ->
            deferred(Produce, Req, State);
        {deferred, _} ->
            answer_with({500, "text/plain", <<"internal error\n">>, []}, Req, State);
        _ ->
            answer_with(Answer, Req, State)
    end.

answer_with({Status, Type, Body, Extra}, #{method := M, keep_alive := KA}, State) ->
    #state{name = Name} = State,
    Out = case M of
              'HEAD' -> {head, Body};
              _ -> Body
          end,
    case KA of
        true ->
            %% waiting before the answer leaves: a client that reads it and
            %% connects again at once finds this connection evictable, not
            %% busy (an eviction is handled after this response is written)
            erlmcp_flow_listener_server:waiting(Name),
            case respond(State, Status, Type, Out, keep_alive, Extra) of
                ok -> {keep_alive, State};
                closed -> close
            end;
        false ->
            respond(State, Status, Type, Out, close, Extra),
            close
    end.

%% A deferred answer: the handler's producer runs here and either returns a
%% whole answer (sent as any other) or streams one, its head first, then
%% its pieces as chunks (HTTP/1.1; an HTTP/1.0 client gets them unframed and
%% the connection closes after them).
deferred(Produce, #{version := V, keep_alive := KA0} = Req, #state{socket = S} = State) ->
    Chunked = V =:= {1, 1},
    KA = KA0 andalso Chunked,
    Framing = [case Chunked of
                   true -> "transfer-encoding: chunked\r\n";
                   false -> []
               end, "cache-control: no-cache\r\n"],
    Stream = fun({head, Status, Type, Extra}) ->
                     sent(erlmcp_flow_socket:send(S, head(Status, Type, Framing, Extra, KA)));
                ({chunk, Data}) ->
                     case iolist_size(Data) of
                         0 -> ok;
                         _ when Chunked ->
                             sent(erlmcp_flow_socket:send(
                                    S, [integer_to_binary(iolist_size(Data), 16), "\r\n", Data, "\r\n"]));
                         _ ->
                             sent(erlmcp_flow_socket:send(S, Data))
                     end
             end,
    case Produce(Stream) of
        {_, _, _, _} = Whole ->
            answer_with(Whole, Req, State);
        {_, _, _} = {St, Ty, Bo} ->
            answer_with({St, Ty, Bo, []}, Req, State);
        streamed when KA ->
            erlmcp_flow_listener_server:waiting(State#state.name),
            case erlmcp_flow_socket:send(S, <<"0\r\n\r\n">>) of
                ok -> {keep_alive, State};
                _ -> erlmcp_flow_socket:close(S), close
            end;
        streamed ->
            _ = Chunked andalso erlmcp_flow_socket:send(S, <<"0\r\n\r\n">>),
            erlmcp_flow_socket:close(S),
            close
    end.

sent(ok) -> ok;
sent(_) -> closed.

get_for_head('HEAD') -> 'GET';
get_for_head(M) -> M.

handle(Handler, Method, Path, Headers, Body, Ctx) ->
    try
        case erlang:function_exported(Handler, handle, 5) of
            true -> Handler:handle(Method, Path, Headers, Body, Ctx);
            false -> Handler:handle(Method, Path, Headers, Body)
        end
    of
        {St, Ty, Bo} -> {St, Ty, Bo, []};
        {_, _, _, _} = Four -> Four;
        {deferred, F} = Deferred when is_function(F, 1) -> Deferred
    catch
        Class:Reason ->
            logger:error("erlmcp_flow: HTTP handler ~p crashed: ~p:~p", [Handler, Class, Reason]),
            {500, "text/plain", <<"internal error\n">>, []}
    end.

%% Past the client's rate: overload, as JSON-RPC says it.
overloaded() ->
    {429, "application/json",
     <<"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32002,\"message\":\"Overloaded\","
       "\"data\":{\"reason\":\"rate_limit\"}}}">>,
     [{"retry-after", "1"}]}.

%%====================================================================
%% Socket, timers
%%====================================================================

next(#state{socket = S} = State) ->
    ok = erlmcp_flow_socket:setopts(S, [{active, once}]),
    State.

%% Bytes of a request are arriving: its timer runs from the first of them.
arriving(#state{timer = {request, _}} = State) -> State;
arriving(State) -> request_timer(State).

%% A request is whole: no timer until the next one begins (or the idle one).
done_arriving(#state{timer = T} = State) ->
    cancel(T),
    State#state{timer = undefined}.

request_timer(#state{limits = #{request_timeout_ms := Ms}} = State) ->
    timer(State, Ms, request).

idle_timer(#state{timer = {idle, _}} = State) -> State;
idle_timer(#state{limits = #{idle_timeout_ms := Ms}} = State) ->
    timer(State, Ms, idle).

timer(#state{timer = Old} = State, Ms, Tag) ->
    cancel(Old),
    State#state{timer = {Tag, erlang:start_timer(Ms, self(), Tag)}}.

cancel(undefined) -> ok;
cancel({_, Ref}) -> _ = erlang:cancel_timer(Ref), ok.

%% `ok' once written, `closed' when the write failed (the connection is gone).
respond(#state{socket = S}, Status, Type, Body0, Connection, Extra) ->
    {Body, Length} = case Body0 of
                         {head, B} -> {<<>>, byte_size(B)};
                         B -> {B, byte_size(B)}
                     end,
    Head = head(Status, Type, ["content-length: ", integer_to_binary(Length), "\r\n"], Extra,
                Connection =:= keep_alive),
    Sent = erlmcp_flow_socket:send(S, [Head, Body]),
    case Connection of
        close -> erlmcp_flow_socket:close(S), closed;
        linger -> linger(S), closed;
        keep_alive when Sent =:= ok -> ok;
        keep_alive -> closed
    end.

%% A response's head: status line, type, framing (`Content-Length' or
%% chunked), the handler's headers, the connection's fate. An iolist, not
%% io_lib:format: this is on every response's path.
head(Status, Type, Framing, Extra, KeepAlive) ->
    ["HTTP/1.1 ", integer_to_binary(Status), $\s, reason(Status),
     "\r\ncontent-type: ", Type, "\r\n", Framing,
     [[N, ": ", V, "\r\n"] || {N, V} <- Extra],
     "connection: ", case KeepAlive of true -> "keep-alive"; false -> "close" end, "\r\n\r\n"].

%% A graceful close after an error answer: our side shut down, then what
%% the client still sends read and dropped (at most ?LINGER_BYTES, for at
%% most ?LINGER_MS) until it closes, so that its unread bytes do not make
%% the kernel reset the connection before the client read the answer.
linger(S) ->
    _ = erlmcp_flow_socket:shutdown(S, write),
    _ = erlmcp_flow_socket:setopts(S, [{active, false}]),
    discard(S, erlang:monotonic_time(millisecond) + ?LINGER_MS, ?LINGER_BYTES),
    erlmcp_flow_socket:close(S).

discard(S, Deadline, Left) when Left > 0 ->
    case Deadline - erlang:monotonic_time(millisecond) of
        T when T > 0 ->
            case erlmcp_flow_socket:recv(S, 0, T) of
                {ok, D} -> discard(S, Deadline, Left - byte_size(D));
                {error, _} -> ok
            end;
        _ -> ok
    end;
discard(_S, _Deadline, _Left) ->
    ok.

%% A plain TCP socket stays writable after the client shuts down its side,
%% so that a request sent before is still answered.
half_close(S) when is_port(S) -> [{exit_on_close, false}];
half_close(_) -> [].

ctx(Name, Socket) ->
    Peer = case erlmcp_flow_socket:peername(Socket) of
               {ok, P} -> P;
               {error, _} -> undefined
           end,
    Cert = case erlmcp_flow_socket:peercert(Socket) of
               {ok, C} -> C;
               {error, _} -> undefined
           end,
    #{listener => Name, peer => Peer, tls => not is_port(Socket), peercert => Cert}.

ip(#state{ctx = #{peer := {Ip, _}}}) -> Ip;
ip(_) -> undefined.

reason(100) -> "Continue";
reason(200) -> "OK";
reason(204) -> "No Content";
reason(400) -> "Bad Request";
reason(401) -> "Unauthorized";
reason(403) -> "Forbidden";
reason(404) -> "Not Found";
reason(405) -> "Method Not Allowed";
reason(413) -> "Content Too Large";
reason(414) -> "URI Too Long";
reason(417) -> "Expectation Failed";
reason(429) -> "Too Many Requests";
reason(431) -> "Request Header Fields Too Large";
reason(500) -> "Internal Server Error";
reason(501) -> "Not Implemented";
reason(503) -> "Service Unavailable";
reason(505) -> "HTTP Version Not Supported";
reason(_) -> "".
