%% @doc JSON-RPC 2.0 over TCP: newline-delimited JSON, one process per
%% connection (`erlmcp_flow_rpc_tcp_conn', the protocol of an
%% `erlmcp_flow_listener').
%% Configured by `transports.tcp': `enabled' (false), `ip' (loopback), `port'
%% (7400; 0 picks a free one, see `erlmcp_flow_transport:port(tcp)'),
%% `token' (undefined: with one, the first message must be
%% `flow.authenticate' `{"token"}'), `max_connections' (1024; past it a new
%% connection gets one error line and is closed) and `idle_timeout_ms'
%% (300000: a client connection with nothing to do for so long is closed).
-module(erlmcp_flow_rpc_tcp).

-export([start_link/0]).
-export([port/0]).
-export([check/0]).
-export([config/0]).

-define(DEFAULTS, #{enabled => false, ip => loopback, port => 7400, token => undefined,
                    max_connections => 1024, idle_timeout_ms => 300000}).

%% @doc The `transports.tcp' settings, defaults filled in.
-spec config() -> map().
config() ->
    maps:merge(?DEFAULTS, erlmcp_flow_config:get(transports, tcp)).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    #{ip := Ip, port := Port, max_connections := Max, idle_timeout_ms := Idle} = config(),
    erlmcp_flow_listener:start_link(
      #{name => ?MODULE, tag => rpc_tcp, ip => Ip, port => Port, max_connections => Max,
        protocol => erlmcp_flow_rpc_tcp_conn,
        protocol_opts => #{idle_timeout_ms => Idle,
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
