%% @private
%% @doc The top supervisor. `one_for_all': the registry owns the router
%% resource that every other part uses, so when it restarts everything that
%% holds a reference into the old one restarts with it. The Q-learning server
%% starts after the registry (it loads the model into the registry's router)
%% and stops before it (it saves the model on the way out). The telemetry
%% (metrics, span export, the `/metrics' listener) starts after routing and
%% stops before it, so the exporter drains the spans of the last tasks; the
%% JSON-RPC transports start last and stop first: no request arrives once
%% what it needs is stopping.
-module(erlmcp_flow_sup).
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
    SupFlags = #{strategy => one_for_all, intensity => 5, period => 10},
    Children = [#{id => erlmcp_flow_registry,
                  start => {erlmcp_flow_registry, start_link, []}},
                #{id => erlmcp_flow_q_learning,
                  start => {erlmcp_flow_q_learning, start_link, []}},
                #{id => erlmcp_flow_bulkhead,
                  start => {erlmcp_flow_bulkhead, start_link, []}},
                #{id => erlmcp_flow_task_sup,
                  start => {erlmcp_flow_task_sup, start_link, []},
                  type => supervisor},
                #{id => erlmcp_flow_erlmcp_sup,
                  start => {erlmcp_flow_erlmcp_sup, start_link, []},
                  type => supervisor},
                #{id => erlmcp_flow_mcp_sup,
                  start => {erlmcp_flow_mcp_sup, start_link, []},
                  type => supervisor},
                #{id => erlmcp_flow_cluster_sup,
                  start => {erlmcp_flow_cluster_sup, start_link, []},
                  type => supervisor},
                #{id => erlmcp_flow_telemetry_sup,
                  start => {erlmcp_flow_telemetry_sup, start_link, []},
                  type => supervisor},
                #{id => erlmcp_flow_transport_sup,
                  start => {erlmcp_flow_transport_sup, start_link, []},
                  type => supervisor}],
    {ok, {SupFlags, Children}}.
