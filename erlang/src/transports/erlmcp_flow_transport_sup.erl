%% @private
%% @doc The JSON-RPC transports' listeners, when configured: HTTP
%% (`erlmcp_flow_rpc_http', which also serves `/mcp') and TCP
%% (`erlmcp_flow_rpc_tcp'). `one_for_one': a listener that fails restarts
%% alone; routing and the other listener carry on.
-module(erlmcp_flow_transport_sup).
-behaviour(supervisor).

%% API
-export([start_link/0]).

%% supervisor callbacks
-export([init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @private
-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    SupFlags = #{strategy => one_for_one, intensity => 5, period => 10},
    Children = [#{id => erlmcp_flow_rpc_http,
                  start => {erlmcp_flow_rpc_http, start_link, []},
                  type => supervisor}
                || maps:get(enabled, erlmcp_flow_rpc_http:config())]
               ++ [#{id => erlmcp_flow_rpc_tcp,
                     start => {erlmcp_flow_rpc_tcp, start_link, []},
                     type => supervisor}
                   || maps:get(enabled, erlmcp_flow_rpc_tcp:config())],
    {ok, {SupFlags, Children}}.
