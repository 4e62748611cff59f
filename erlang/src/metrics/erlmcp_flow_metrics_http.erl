%% @doc `GET /metrics': the Prometheus exposition (`erlmcp_flow_prometheus')
%% on an `erlmcp_flow_http' listener.
%%
%% Off by default. With `metrics => #{http => true}' the listener binds to
%% `metrics.ip' (default `loopback'; `any', or an address tuple) and
%% `metrics.port' (default 9464; 0 picks a free port, see `port/0'). Any
%% other path is answered 404 and any other method 405. The listener keeps at
%% most `metrics.max_connections' (64) connections; a request must arrive
%% within `metrics.request_timeout_ms' (5 000) and a kept-alive connection
%% is closed after `metrics.idle_timeout_ms' (60 000) without one. At the
%% limit a new connection takes the place of the oldest one waiting for a
%% request, so idle or slow clients cannot lock scrapes out. `metrics.tls'
%% serves it over HTTPS (see `erlmcp_flow_tls'); `metrics.rate_limit' (1 000
%% requests per second per client address) answers 429 past it.
%%
%% If the port cannot be bound, the application does not start, with the
%% reason `{metrics_http, Ip, Port, Why}'.
-module(erlmcp_flow_metrics_http).

%% API
-export([start_link/0]).
-export([port/0]).
-export([check/0]).

%% erlmcp_flow_http handler
-export([handle/4]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    #{ip := Ip, port := Port, max_connections := Max, request_timeout_ms := Request,
      idle_timeout_ms := Idle, rate_limit := Rate, tls := Tls} = erlmcp_flow_config:get(metrics),
    erlmcp_flow_http:start_link(#{name => ?MODULE, tag => metrics_http, ip => Ip, port => Port,
                                  handler => ?MODULE,
                                  tls => erlmcp_flow_tls:server_opts(Tls),
                                  limits => #{max_connections => Max,
                                              request_timeout_ms => Request,
                                              idle_timeout_ms => Idle,
                                              rate_limit => Rate}}).

%% @doc `ok' when the listener is off or its address can be bound now, else
%% `{error, {metrics_http, Ip, Port, Why}}': the application checks this
%% before it starts anything.
-spec check() -> ok | {error, {metrics_http, inet:ip_address(), inet:port_number(), term()}}.
check() ->
    case erlmcp_flow_config:get(metrics) of
        #{http := true, ip := Ip, port := Port} ->
            erlmcp_flow_listener:probe(#{ip => Ip, port => Port, tag => metrics_http});
        #{} ->
            ok
    end.

%% @doc The port the listener is bound to; `undefined' when it is off.
-spec port() -> inet:port_number() | undefined.
port() ->
    erlmcp_flow_http:port(?MODULE).

%% @private Answers one request.
-spec handle(atom() | binary(), binary(), [{binary(), binary()}], binary()) ->
          {pos_integer(), iodata(), binary()}.
handle('GET', <<"/metrics">>, _Headers, _Body) ->
    {200, erlmcp_flow_prometheus:content_type(), iolist_to_binary(erlmcp_flow_prometheus:render())};
handle('GET', <<"/status", _/binary>> = Path, Headers, _Body) ->
    erlmcp_flow_status:handle(Path, proplists:get_value(<<":query">>, Headers, <<>>));
handle('GET', _Path, _Headers, _Body) ->
    {404, "text/plain", <<"not found: GET /metrics, GET /status\n">>};
handle(_Method, _Path, _Headers, _Body) ->
    {405, "text/plain", <<"method not allowed: GET /metrics, GET /status\n">>}.
