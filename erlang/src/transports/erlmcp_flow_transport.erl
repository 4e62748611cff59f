%% @doc The JSON-RPC transports a node listens on.
-module(erlmcp_flow_transport).

-export([port/1]).

%% @doc The port a transport is bound to (`port => 0' picks a free one);
%% `undefined' when it is not running (or is not a transport).
-spec port(term()) -> inet:port_number() | undefined.
port(http) -> erlmcp_flow_rpc_http:port();
port(tcp) -> erlmcp_flow_rpc_tcp:port();
port(_) -> undefined.
