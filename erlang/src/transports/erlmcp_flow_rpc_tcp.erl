%% @doc JSON-RPC 2.0 over TCP (or TLS): newline-delimited JSON, one process
%% per connection (`erlmcp_flow_rpc_tcp_conn', the protocol of an
%% `erlmcp_flow_listener').
%% Configured by `transports.tcp': `enabled' (false), `ip' (loopback), `port'
%% (7400; 0 picks a free one, see `erlmcp_flow_transport:port(tcp)'),
%% `token' (undefined: with one, the first message must be
%% `flow.authenticate' `{"token"}' within `auth_timeout_ms' (5000)), `tls'
%% (see `erlmcp_flow_tls'; with `client_certs => required' the certificate
%% authenticates the client), `max_connections' (1024 authenticated; past
%% it a new connection gets one error line and is closed),
%% `max_unauthenticated' (64, their own pool), `idle_timeout_ms' (300000: a
%% client connection with nothing to do for so long is closed),
%% `request_timeout_ms' (30000: a line must arrive whole within it),
%% `max_in_flight' (64 messages of one connection served at once; the
%% connection stops reading at the bound), `max_agents' (1000 agents
%% registered over one connection) and `rate_limit' (10 000 messages per
%% second per client address). Node-wide, `transports.max_in_flight' (4096)
%% and `transports.max_in_flight_bytes' (64 MiB) bound the messages served at
%% once over every connection: past either a message is answered -32002.
-module(erlmcp_flow_rpc_tcp).

-export([start_link/0]).
-export([port/0]).
-export([check/0]).
-export([config/0]).

-define(DEFAULTS, #{enabled => false, ip => loopback, port => 7400, token => undefined,
                    max_connections => 1024, idle_timeout_ms => 300000,
                    request_timeout_ms => 30000, auth_timeout_ms => 5000,
                    max_unauthenticated => 64, max_in_flight => 64, max_agents => 1000,
                    rate_limit => 10000, tls => undefined}).

%% @doc The `transports.tcp' settings, defaults filled in.
-spec config() -> map().
config() ->
    maps:merge(?DEFAULTS, erlmcp_flow_config:get(transports, tcp)).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    #{ip := Ip, port := Port, max_connections := Max, tls := Tls} = Config = config(),
    erlmcp_flow_listener:start_link(
      (maps:with([max_unauthenticated, rate_limit], Config))#{
        max_in_flight => erlmcp_flow_config:get(transports, max_in_flight),
        max_in_flight_bytes => erlmcp_flow_config:get(transports, max_in_flight_bytes),
        name => ?MODULE, tag => rpc_tcp, ip => Ip, port => Port, max_connections => Max,
        tls => erlmcp_flow_tls:server_opts(Tls),
        protocol => erlmcp_flow_rpc_tcp_conn,
        protocol_opts => (maps:with([idle_timeout_ms, request_timeout_ms, auth_timeout_ms,
                                     max_in_flight, max_agents], Config))#{
                           max_body_bytes => erlmcp_flow_config:get(transports, max_message_bytes)}}).

%% @doc Whether the configured port can be bound (checked before the tree starts).
-spec check() -> ok | {error, {rpc_tcp, inet:ip_address(), inet:port_number(), term()}}.
check() ->
    case config() of
        #{enabled := true, ip := Ip, port := Port} ->
            erlmcp_flow_listener:probe(#{ip => Ip, port => Port, tag => rpc_tcp});
        #{} ->
            ok
    end.

-spec port() -> inet:port_number() | undefined.
port() ->
    erlmcp_flow_listener:port(?MODULE).
