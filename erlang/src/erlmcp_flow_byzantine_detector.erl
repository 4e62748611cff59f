%% @doc What this node cannot trust or reach: partitions now.
-module(erlmcp_flow_byzantine_detector).

-export([detect_partitions/0]).

%% @doc The nodes this node cannot reach now: suspected by the failure
%% detector, or seen in the cluster before and disconnected since.
-spec detect_partitions() -> [node()].
detect_partitions() ->
    lists:usort(erlmcp_flow_failure_detector:suspected() ++ erlmcp_flow_cluster:unreachable()).
