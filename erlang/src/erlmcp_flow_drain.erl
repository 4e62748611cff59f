%% @private
%% @doc Draining a node before it restarts (`erlmcp_flow:drain/0,1'): the
%% node takes no new task, leaves routing on every node, and waits until no
%% task it took is left:
%%
%% 1. new tasks on this node (`execute', `route_task', and so every
%%    transport's requests) answer `{error, draining}' (JSON-RPC -32011);
%% 2. the node leaves the cluster: every peer takes its agents out of
%%    routing before the next step (`erlmcp_flow_cluster:leave/0');
%% 3. it waits, up to the timeout, until none is in flight of: the tasks
%%    this node's callers routed (to any node's agents), the tasks other
%%    nodes' callers wait for on this node's agents (each peer counts its
%%    own), and the quorum votes this node runs for others.
%%
%% Nothing is cancelled: a task in flight finishes on its agent. The node
%% stays drained until the application restarts (then it joins again).
-module(erlmcp_flow_drain).

-export([drain/1]).

-export_type([opts/0, left/0]).

-type opts() :: #{timeout => timeout()}.
%% What was still in flight when the timeout came.
-type left() :: #{in_flight := non_neg_integer(), remote := non_neg_integer(),
                  votes := non_neg_integer()}.

-define(DEFAULT_TIMEOUT, 30000).
%% How often the counts are read again while tasks finish (ms).
-define(POLL_MS, 10).
%% How long a peer has to count (ms); one that does not answer has nothing
%% this node could still answer.
-define(PEER_TIMEOUT, 5000).

%% @doc Drains this node (see the module doc). `ok' once nothing is in
%% flight; `{error, {timeout, Left}}' when the timeout came first (the node
%% stays drained); `{error, not_started}' when the application is not
%% running.
-spec drain(opts()) -> ok | {error, {timeout, left()} | not_started | {badarg, term()}}.
drain(Opts) when is_map(Opts) ->
    case maps:keys(maps:remove(timeout, Opts)) of
        [] ->
            case maps:get(timeout, Opts, ?DEFAULT_TIMEOUT) of
                T when T =:= infinity; is_integer(T), T >= 0 -> start(T);
                T -> {error, {badarg, {timeout, T}}}
            end;
        [Key | _] ->
            {error, {badarg, {unknown_option, Key}}}
    end;
drain(Opts) ->
    {error, {badarg, {opts, Opts}}}.

start(Timeout) ->
    case whereis(erlmcp_flow_registry) of
        undefined ->
            {error, not_started};
        _ ->
            ok = erlmcp_flow_registry:set_draining(),
            logger:notice("erlmcp_flow: draining ~ts: no new tasks, leaving the cluster", [node()]),
            ok = erlmcp_flow_cluster:leave(),
            Deadline = case Timeout of
                           infinity -> infinity;
                           _ -> erlang:monotonic_time(millisecond) + Timeout
                       end,
            wait(Deadline)
    end.

wait(Deadline) ->
    case left() of
        #{in_flight := 0, remote := 0, votes := 0} ->
            logger:notice("erlmcp_flow: ~ts is drained", [node()]),
            ok;
        Left ->
            case Deadline =/= infinity andalso erlang:monotonic_time(millisecond) >= Deadline of
                true ->
                    {error, {timeout, Left}};
                false ->
                    receive after ?POLL_MS -> wait(Deadline) end
            end
    end.

%% What is still in flight, by kind.
left() ->
    InFlight = case erlmcp_flow_registry:with_router(fun erlmcp_flow_nif:router_stats/1) of
                   {ok, #{in_flight := N}} -> N;
                   _ -> 0
               end,
    #{in_flight => InFlight,
      remote => lists:sum([peer_count(Peer) || Peer <- nodes()]),
      votes => erlmcp_flow_vote_service:in_flight()}.

%% The tasks `Peer''s callers wait for on this node's agents.
peer_count(Peer) ->
    try erpc:call(Peer, erlmcp_flow_router, in_flight_to, [node()], ?PEER_TIMEOUT) of
        N when is_integer(N) -> N;
        _ -> 0
    catch
        _:_ -> 0
    end.
