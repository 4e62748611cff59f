%% @doc JSON-RPC 2.0 over HTTP: `POST /rpc' with a JSON-RPC body (one
%% message or a batch) answered `200' with the response (`204' when nothing
%% is owed: notifications only), and `GET /health' answered
%% `{"status": "ok", "agents": N}'. Configured by `transports.http':
%% `enabled' (false), `ip' (loopback), `port' (7401; 0 picks a free one, see
%% `erlmcp_flow_transport:port(http)'), `token' (undefined: with one, every
%% request needs `Authorization: Bearer <token>', the scheme in any case, the
%% token compared in constant time, else 401), `tls' (HTTPS, see
%% `erlmcp_flow_tls'), and the listener's `max_connections' (1024),
%% `request_timeout_ms' (5000), `idle_timeout_ms' (300000), `max_waiting'
%% (768: requests waiting on agents at once, `flow.route_task' over `/rpc'
%% and `tools/call' over `/mcp'; past it they are answered -32002 at once and
%% the other endpoints keep their connections), `max_waiting_per_client'
%% (64, the same per client address) and `rate_limit' (10 000 requests per
%% second per client address; 429 past it). A request with an `Origin'
%% header is answered 403 unless that origin is in `allowed_origins' ([]) or,
%% on a loopback listener, names a loopback host (whose `Host' must too: DNS
%% rebinding), on `/rpc' as on `/mcp'. A body past
%% `transports.max_message_bytes' is answered 413. A `traceparent' header
%% (and `tracestate') joins a routed task to the caller's trace, and the
%% response carries the task span's `traceparent'.
-module(erlmcp_flow_rpc_http).

-export([start_link/0]).
-export([port/0]).
-export([check/0]).
-export([config/0]).
-export([handle/4]).
-export([handle/5]).

-define(DEFAULTS, #{enabled => false, ip => loopback, port => 7401, token => undefined,
                    max_connections => 1024, request_timeout_ms => 5000,
                    idle_timeout_ms => 300000, max_waiting => 768,
                    max_waiting_per_client => 64, rate_limit => 10000,
                    allowed_origins => [], tls => undefined}).

%% @doc The `transports.http' settings, defaults filled in.
-spec config() -> map().
config() ->
    maps:merge(?DEFAULTS, erlmcp_flow_config:get(transports, http)).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    #{ip := Ip, port := Port, max_connections := Max, request_timeout_ms := Request,
      idle_timeout_ms := Idle, tls := Tls} = Config = config(),
    erlmcp_flow_http:start_link(
      #{name => ?MODULE, tag => rpc_http, ip => Ip, port => Port, handler => ?MODULE,
        tls => erlmcp_flow_tls:server_opts(Tls),
        limits => (maps:with([max_waiting, max_waiting_per_client, rate_limit], Config))#{
                    max_connections => Max, request_timeout_ms => Request,
                    idle_timeout_ms => Idle,
                    max_body_bytes => erlmcp_flow_config:get(transports, max_message_bytes)}}).

%% @doc Whether the configured port can be bound (checked before the tree starts).
-spec check() -> ok | {error, {rpc_http, inet:ip_address(), inet:port_number(), term()}}.
check() ->
    case config() of
        #{enabled := true, ip := Ip, port := Port} ->
            erlmcp_flow_listener:probe(#{ip => Ip, port => Port, tag => rpc_http});
        #{} ->
            ok
    end.

-spec port() -> inet:port_number() | undefined.
port() ->
    erlmcp_flow_http:port(?MODULE).

%% @private As `handle/5' for a request of unknown origin (tests).
-spec handle(atom() | binary(), binary(), [{binary(), binary()}], binary()) ->
          {pos_integer(), iodata(), binary()} | {pos_integer(), iodata(), binary(), list()}.
handle(Method, Path, Headers, Body) ->
    handle(Method, Path, Headers, Body, #{}).

%% @private
-spec handle(atom() | binary(), binary(), [{binary(), binary()}], binary(), map()) ->
          {pos_integer(), iodata(), binary()} | {pos_integer(), iodata(), binary(), list()}.
handle(Method, Path, Headers, Body, Conn) ->
    Config = config(),
    case {authorized(Headers, Config), erlmcp_flow_http_origin:allowed(Config, Headers)} of
        {false, _} -> {401, "application/json", <<"{\"error\":\"unauthorized\"}">>};
        {true, false} -> {403, "application/json", <<"{\"error\":\"forbidden: Origin or Host\"}">>};
        {true, true} when Path =:= <<"/mcp">> ->
            route(Method, Path, Headers, Body, {permit(Conn), maps:get(peer, Conn, undefined)});
        {true, true} -> route(Method, Path, Headers, Body, permit(Conn))
    end.

%% The budget of requests that wait on agents: one permit per request of
%% this connection, taken by its first routed task, given back after the
%% answer (by the connection process, which runs the request).
permit(#{listener := Listener, peer := Peer}) ->
    Ip = case Peer of
             {A, _} -> A;
             _ -> undefined
         end,
    fun() ->
            case get({?MODULE, permit}) of
                ok -> ok;
                _ ->
                    R = erlmcp_flow_listener_server:permit(Listener, Ip),
                    _ = R =:= ok andalso put({?MODULE, permit}, {ok, Listener}),
                    R
            end
    end;
permit(_) ->
    fun() -> ok end.

release() ->
    case erase({?MODULE, permit}) of
        {ok, Listener} -> erlmcp_flow_listener_server:release(Listener);
        _ -> ok
    end.

route('POST', <<"/rpc">>, Headers, Body, Permit) ->
    Ctx = (trace_ctx(Headers))#{permit => Permit},
    Self = self(),
    Decoded = erlmcp_flow_jsonrpc:decode(Body),
    Handle = fun(M, P) -> remember_trace(Self, erlmcp_flow_rpc:handle(M, P, Ctx)) end,
    try erlmcp_flow_jsonrpc:responses(Decoded, Handle) of
        {reply, Json} -> {200, "application/json", Json, traceparent_header()};
        noreply -> {204, "application/json", <<>>}
    after
        release()
    end;
route(Method, <<"/mcp">>, Headers, Body, {Permit, Peer}) ->
    Answer = try erlmcp_flow_mcp_http:handle(Method, Headers, Body,
                                             #{ip => maps:get(ip, config()), permit => Permit,
                                               peer => Peer})
             catch Class:Reason:Stack -> release(), erlang:raise(Class, Reason, Stack)
             end,
    case Answer of
        {deferred, Produce} ->
            %% the permit is given back once the deferred answer is sent
            {deferred, fun(Stream) -> try Produce(Stream) after release() end end};
        _ ->
            release(),
            Answer
    end;
route(Method, Path, Headers, Body, _Permit) ->
    route(Method, Path, Headers, Body).

route('GET', <<"/health">>, _Headers, _Body) ->
    Agents = length(erlmcp_flow_registry:list_agents()),
    {ok, Json} = erlmcp_flow_jsonrpc:encode_json(#{status => ok, agents => Agents}),
    {200, "application/json", Json};
route(_Method, Path, _Headers, _Body) when Path =:= <<"/rpc">>; Path =:= <<"/health">> ->
    {405, "text/plain", <<"method not allowed: POST /rpc, GET /health\n">>};
route(_Method, _Path, _Headers, _Body) ->
    {404, "text/plain", <<"not found: POST /rpc, GET /health, POST /mcp\n">>}.

%% The caller's trace headers, for the tasks of this request.
trace_ctx(Headers) ->
    maps:from_list([{transport, http}
                    | [{binary_to_atom(N), V} || {N, V} <- Headers,
                                                 N =:= <<"traceparent">> orelse N =:= <<"tracestate">>]]).

%% The last routed task's trace, for the response's traceparent header.
remember_trace(Self, {ok, #{trace_id := T, span_id := S}} = R) when Self =:= self() ->
    put({?MODULE, traceparent}, <<"00-", T/binary, "-", S/binary, "-01">>),
    R;
remember_trace(_, R) ->
    R.

traceparent_header() ->
    case erase({?MODULE, traceparent}) of
        undefined -> [];
        TP -> [{"traceparent", TP}]
    end.

%% `Authorization: Bearer <token>', the scheme in any case (RFC 9110, 11.1).
authorized(_Headers, #{token := undefined}) ->
    true;
authorized(Headers, #{token := Token}) ->
    case lists:keyfind(<<"authorization">>, 1, Headers) of
        {_, Value} ->
            %% bytes, not characters: a hostile value need not be UTF-8
            %% (the parser already took the whitespace around it)
            case binary:split(Value, <<" ">>) of
                [Scheme, Given] ->
                    erlmcp_flow_http_parser:lowercase(Scheme) =:= <<"bearer">> andalso equal(Given, Token);
                _ ->
                    false
            end;
        false ->
            false
    end.

%% Constant time in the length of the token.
equal(A, B) when byte_size(A) =:= byte_size(B) ->
    crypto:hash_equals(A, B);
equal(_, _) ->
    false.
