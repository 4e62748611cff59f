%% @private
%% @doc The cluster's processes: the `pg' scope (unless another application
%% runs it), membership (`erlmcp_flow_cluster'), the failure detector, the
%% byzantine detector (secret, reputation, blacklist) and the vote service.
%% `rest_for_one': a restarted scope restarts the processes that joined it.
-module(erlmcp_flow_cluster_sup).
-behaviour(supervisor).

-export([start_link/0]).
-export([init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    {ok, {#{strategy => rest_for_one, intensity => 5, period => 10},
          [#{id => scope, start => {erlmcp_flow_cluster, start_scope, []}},
           #{id => erlmcp_flow_cluster, start => {erlmcp_flow_cluster, start_link, []}},
           #{id => erlmcp_flow_failure_detector,
             start => {erlmcp_flow_failure_detector, start_link, []}},
           #{id => erlmcp_flow_byzantine_detector,
             start => {erlmcp_flow_byzantine_detector, start_link, []}},
           #{id => erlmcp_flow_vote_service,
             start => {erlmcp_flow_vote_service, start_link, []}}]}}.
