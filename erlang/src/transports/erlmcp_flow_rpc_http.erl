%% @doc JSON-RPC 2.0 over HTTP: `POST /rpc' with a JSON-RPC body (one
%% message or a batch) answered `200' with the response (`204' when nothing
%% is owed: notifications only), and `GET /health' answered
%% `{"status": "ok", "agents": N}'. Configured by `transports.http':
%% `enabled' (false), `ip' (loopback), `port' (7401; 0 picks a free one, see
%% `erlmcp_flow_transport:port(http)'), `token' (undefined: with one, every
%% request needs `Authorization: Bearer <token>', compared in constant time,
%% else 401), and the listener's `max_connections' (1024),
%% `request_timeout_ms' (5000) and `idle_timeout_ms' (300000). A body past
%% `transports.max_message_bytes' is answered 413. A `traceparent' header
%% (and `tracestate') joins a routed task to the caller's trace, and the
%% response carries the task span's `traceparent'.
-module(erlmcp_flow_rpc_http).

-export([start_link/0]).
-export([port/0]).
-export([check/0]).
-export([config/0]).
-export([handle/4]).

-define(DEFAULTS, #{enabled => false, ip => loopback, port => 7401, token => undefined,
                    max_connections => 1024, request_timeout_ms => 5000,
                    idle_timeout_ms => 300000}).

%% @doc The `transports.http' settings, defaults filled in.
-spec config() -> map().
config() ->
    maps:merge(?DEFAULTS, erlmcp_flow_config:get(transports, http)).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    #{ip := Ip, port := Port, max_connections := Max, request_timeout_ms := Request,
      idle_timeout_ms := Idle} = config(),
    erlmcp_flow_http:start_link(
      #{name => ?MODULE, tag => rpc_http, ip => Ip, port => Port, handler => ?MODULE,
        limits => #{max_connections => Max, request_timeout_ms => Request,
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

%% @private
-spec handle(atom() | binary(), binary(), [{binary(), binary()}], binary()) ->
          {pos_integer(), iodata(), binary()} | {pos_integer(), iodata(), binary(), list()}.
handle(Method, Path, Headers, Body) ->
    case authorized(Headers) of
        false -> {401, "application/json", <<"{\"error\":\"unauthorized\"}">>};
        true -> route(Method, Path, Headers, Body)
    end.

route('POST', <<"/rpc">>, Headers, Body) ->
    Ctx = trace_ctx(Headers),
    Self = self(),
    Decoded = erlmcp_flow_jsonrpc:decode(Body),
    Handle = fun(M, P) -> remember_trace(Self, erlmcp_flow_rpc:handle(M, P, Ctx)) end,
    case erlmcp_flow_jsonrpc:responses(Decoded, Handle) of
        {reply, Json} -> {200, "application/json", Json, traceparent_header()};
        noreply -> {204, "application/json", <<>>}
    end;
route('GET', <<"/health">>, _Headers, _Body) ->
    Agents = length(erlmcp_flow_registry:list_agents()),
    {ok, Json} = erlmcp_flow_jsonrpc:encode_json(#{status => ok, agents => Agents}),
    {200, "application/json", Json};
route(Method, <<"/mcp">>, Headers, Body) ->
    erlmcp_flow_mcp_http:handle(Method, Headers, Body, #{ip => maps:get(ip, config())});
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

authorized(Headers) ->
    case config() of
        #{token := undefined} ->
            true;
        #{token := Token} ->
            case lists:keyfind(<<"authorization">>, 1, Headers) of
                {_, <<"Bearer ", Given/binary>>} -> equal(string:trim(Given), Token);
                _ -> false
            end
    end.

%% Constant time in the length of the token.
equal(A, B) when byte_size(A) =:= byte_size(B) ->
    crypto:hash_equals(A, B);
equal(_, _) ->
    false.
