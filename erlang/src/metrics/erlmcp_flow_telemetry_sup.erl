%% @private
%% @doc Supervises what reads the router without taking part in routing:
%% the metrics sampler, and when configured the span exporter and the
%% `/metrics' listener (Prometheus and the status page). `one_for_one': a
%% failing exporter or listener restarts alone and never takes the registry
%% down with it.
-module(erlmcp_flow_telemetry_sup).
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
    Metrics = #{id => erlmcp_flow_metrics, start => {erlmcp_flow_metrics, start_link, []}},
    Exporter = [#{id => erlmcp_flow_span_exporter,
                  start => {erlmcp_flow_span_exporter, start_link, []},
                  %% the last batches go out on the way down
                  shutdown => 2 * erlmcp_flow_config:get(export, http_timeout_ms) + 1000}
                || erlmcp_flow_config:export_enabled(erlmcp_flow_config:get(export))],
    Http = [#{id => erlmcp_flow_metrics_http,
              start => {erlmcp_flow_metrics_http, start_link, []},
              type => supervisor}
            || erlmcp_flow_config:get(metrics, http)],
    {ok, {SupFlags, [Metrics | Exporter ++ Http]}}.
