%% @private
%% @doc One connection of an `erlmcp_flow_http' listener: it reads requests
%% (`{active, once}', so a fast client cannot flood it; OTP's `http_bin'
%% packet parser for the request line and headers, lines of at most 8 KiB,
%% 64 headers), has the handler answer each, and keeps the connection open
%% between requests (HTTP/1.1 keep-alive) while the listener lets it.
%%
%% Timers: a request's line and headers must all arrive within
%% `request_timeout_ms' from the connection's start (for the first request)
%% or from its first line; a kept-alive connection waits `idle_timeout_ms'
%% for its next request. Past either the connection is closed. A body
%% (`Content-Length', at most 1 MiB) must arrive within the request timeout
%% too.
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

-define(MAX_LINE, 8192).
-define(MAX_HEADERS, 64).
-define(MAX_BODY, 1048576).

-record(req, {method :: atom() | binary(),
              path = <<>> :: binary(),
              version = {1, 1} :: {non_neg_integer(), non_neg_integer()},
              headers = [] :: [{binary(), binary()}],
              length = 0 :: non_neg_integer() | infinity,
              body = [] :: iodata()}).
-record(state, {name :: atom(),
                handler :: module(),
                limits :: erlmcp_flow_http:limits(),
                socket :: gen_tcp:socket() | undefined,
                req :: #req{} | undefined,
                timer :: reference() | undefined}).

-spec start_link(atom(), {module(), erlmcp_flow_http:limits()}) -> {ok, pid()}.
start_link(Name, {Handler, Limits}) ->
    gen_server:start_link(?MODULE, {Name, Handler, Limits}, []).

%% @doc Hands the connection its socket (after its ownership).
-spec serve(pid(), gen_tcp:socket()) -> ok.
serve(Pid, Socket) ->
    gen_server:cast(Pid, {serve, Socket}).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init({atom(), module(), erlmcp_flow_http:limits()}) -> {ok, #state{}}.
init({Name, Handler, Limits0}) ->
    Limits = maps:merge(#{max_body_bytes => ?MAX_BODY}, Limits0),
    {ok, #state{name = Name, handler = Handler, limits = Limits}}.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_cast({serve, Socket}, #state{name = Name} = State0) ->
    State = State0#state{socket = Socket},
    case erlmcp_flow_listener_server:enter(Name) of
        ok ->
            ok = inet:setopts(Socket, [{packet, http_bin}, {packet_size, ?MAX_LINE}]),
            {noreply, next(request_timer(State#state{req = undefined}))};
        full ->
            respond(State, 503, "text/plain", <<"busy: every connection is serving\n">>, close),
            {stop, normal, State}
    end;
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_info({http, S, {http_request, Method, Uri, Version}}, #state{socket = S, req = R} = State0) ->
    %% a kept-alive connection's next request: its own timer from now on
    State = case R of
                undefined -> request_timer(State0);
                _ -> State0
            end,
    %% the query string, if any, reaches the handler as the pseudo-header
    %% `:query' (no header read from the wire starts with a colon)
    {Path, Query} = target(Uri),
    Req = #req{method = Method, path = Path, version = Version,
               headers = [{<<":query">>, Query} || Query =/= <<>>]},
    {noreply, next(State#state{req = Req})};
handle_info({http, S, {http_header, _, Field, _, Value}}, #state{socket = S, req = #req{} = R} = State) ->
    case length(R#req.headers) < ?MAX_HEADERS of
        true ->
            Name = header_name(Field),
            R1 = R#req{headers = [{Name, Value} | R#req.headers]},
            {noreply, next(State#state{req = content_length(Name, Value, R1)})};
        false ->
            respond(State, 431, "text/plain", <<"too many headers\n">>, close),
            {stop, normal, State}
    end;
handle_info({http, S, http_eoh}, #state{socket = S, req = #req{length = 0} = R} = State) ->
    answer(R, State);
handle_info({http, S, http_eoh}, #state{socket = S, req = #req{length = N}} = State)
  when N > map_get(max_body_bytes, State#state.limits) ->
    respond(State, 413, "text/plain", <<"body too large\n">>, close),
    {stop, normal, State};
handle_info({http, S, http_eoh}, #state{socket = S} = State) ->
    ok = inet:setopts(S, [{packet, raw}]),
    {noreply, next(State)};
handle_info({tcp, S, Data}, #state{socket = S, req = #req{length = N, body = B} = R} = State) ->
    Body = [B, Data],
    case iolist_size(Body) of
        Size when Size >= N ->
            <<Whole:N/binary, _/binary>> = iolist_to_binary(Body),
            answer(R#req{body = Whole}, State);
        _ ->
            {noreply, next(State#state{req = R#req{body = Body}})}
    end;
handle_info({http, S, {http_error, _}}, #state{socket = S} = State) ->
    respond(State, 400, "text/plain", <<"bad request\n">>, close),
    {stop, normal, State};
handle_info({erlmcp_flow_listener, close}, State) ->
    %% the listener needs this connection's place
    {stop, normal, State};
handle_info({timeout, T, _}, #state{timer = T} = State) ->
    {stop, normal, State};
handle_info({tcp_closed, S}, #state{socket = S} = State) ->
    {stop, normal, State};
handle_info({tcp_error, S, _}, #state{socket = S} = State) ->
    {stop, normal, State};
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Internal functions
%%====================================================================

%% A whole request: the handler answers it, then the connection waits for
%% the next one (kept alive) or closes.
answer(#req{method = M, path = P, headers = H, body = B, version = V}, #state{name = Name} = State) ->
    erlmcp_flow_listener_server:busy(Name),
    {Status, Type, Body, Extra} = case handle(State#state.handler, M, P, H, iolist_to_binary(B)) of
                                      {St, Ty, Bo} -> {St, Ty, Bo, []};
                                      {_, _, _, _} = Four -> Four
                                  end,
    case keep_alive(V, H) of
        true ->
            %% waiting before the answer leaves: a client that reads it and
            %% connects again at once finds this connection evictable, not
            %% busy (an eviction is handled after this response is written)
            erlmcp_flow_listener_server:waiting(Name),
            respond(State, Status, Type, Body, keep_alive, Extra),
            ok = inet:setopts(State#state.socket, [{packet, http_bin}]),
            {noreply, next(idle_timer(State#state{req = undefined}))};
        false ->
            respond(State, Status, Type, Body, close, Extra),
            {stop, normal, State}
    end.

handle(Handler, Method, Path, Headers, Body) ->
    try Handler:handle(Method, Path, Headers, Body)
    catch
        Class:Reason ->
            logger:error("erlmcp_flow: HTTP handler ~p crashed: ~p:~p", [Handler, Class, Reason]),
            {500, "text/plain", <<"internal error\n">>}
    end.

next(#state{socket = S} = State) ->
    ok = inet:setopts(S, [{active, once}]),
    State.

request_timer(#state{limits = #{request_timeout_ms := Ms}} = State) ->
    timer(State, Ms, request).

idle_timer(#state{limits = #{idle_timeout_ms := Ms}} = State) ->
    timer(State, Ms, idle).

timer(#state{timer = Old} = State, Ms, Tag) ->
    _ = Old =/= undefined andalso erlang:cancel_timer(Old),
    State#state{timer = erlang:start_timer(Ms, self(), Tag)}.

respond(State, Status, Type, Body, Connection) ->
    respond(State, Status, Type, Body, Connection, []).

%% `Extra' are more header lines, `{Name, Value}'.
respond(#state{socket = S}, Status, Type, Body, Connection, Extra) ->
    %% an iolist, not io_lib:format: this is on every response's path
    Head = ["HTTP/1.1 ", integer_to_binary(Status), $\s, reason(Status),
            "\r\ncontent-type: ", Type,
            "\r\ncontent-length: ", integer_to_binary(byte_size(Body)), "\r\n",
            [[N, ": ", V, "\r\n"] || {N, V} <- Extra],
            "connection: ", case Connection of keep_alive -> "keep-alive"; close -> "close" end,
            "\r\n\r\n"],
    _ = gen_tcp:send(S, [Head, Body]),
    case Connection of
        close -> _ = gen_tcp:close(S), ok;
        keep_alive -> ok
    end.

keep_alive({1, 1}, Headers) -> not has_token(<<"connection">>, <<"close">>, Headers);
keep_alive(_, Headers) -> has_token(<<"connection">>, <<"keep-alive">>, Headers).

has_token(Name, Token, Headers) ->
    lists:any(fun({N, V}) -> N =:= Name andalso string:lowercase(string:trim(V)) =:= Token end,
              Headers).

content_length(<<"content-length">>, Value, R) ->
    case string:to_integer(string:trim(Value)) of
        {N, <<>>} when is_integer(N), N >= 0 -> R#req{length = N};
        _ -> R#req{length = infinity}
    end;
content_length(_, _, R) ->
    R.

header_name(F) when is_atom(F) -> string:lowercase(atom_to_binary(F));
header_name(F) -> string:lowercase(F).

%% A request target's path and query string (empty when there is none).
target({abs_path, P}) -> split_target(P);
target({absoluteURI, _, _, _, P}) -> split_target(P);
target(_) -> {<<>>, <<>>}.

split_target(P) ->
    case binary:split(P, <<"?">>) of
        [Path, Query] -> {Path, Query};
        [Path] -> {Path, <<>>}
    end.

reason(200) -> "OK";
reason(204) -> "No Content";
reason(401) -> "Unauthorized";
reason(400) -> "Bad Request";
reason(404) -> "Not Found";
reason(405) -> "Method Not Allowed";
reason(413) -> "Payload Too Large";
reason(431) -> "Request Header Fields Too Large";
reason(500) -> "Internal Server Error";
reason(503) -> "Service Unavailable";
reason(_) -> "".
