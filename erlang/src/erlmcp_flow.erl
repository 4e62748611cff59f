%% @doc erlmcp_flow: routes every task of an erlmcp node to the right agent.
%%
%% This module is the public API. Agents (processes speaking the agent
%% protocol, usually written with the `erlmcp_flow_agent' behaviour) and
%% swarms (a coordinator answering for its members, e.g. `erlmcp_flow_swarm')
%% are registered with their capabilities; `execute/2,3' then sends a task to
%% one that holds every required capability, chosen by the configured
%% strategy, and returns its one answer. The decision is made by the Rust core
%% in the caller's process: no server sits between a caller and its agent.
%%
%% The agent protocol: the agent receives
%% `{execute_task, Task, TraceCtx, From, Ref}' and answers
%% `From ! {task_result, Ref, {ok, Result} | {error, Reason}}'; it may receive
%% `{cancel_task, Ref}' when the caller stops waiting.
-module(erlmcp_flow).

%% API
-export([execute/2]).
-export([execute/3]).
-export([route_task/2]).
-export([register_agent/3]).
-export([register_agent/4]).
-export([register_swarm/3]).
-export([unregister_agent/1]).
-export([find_agent/1]).
-export([find_agents_by_capability/1]).
-export([query_agents/1]).
-export([get_agent_load/1]).
-export([agent_stats/1]).
-export([stats/0]).
-export([memory/0]).
-export([explain/1]).
-export([nodes/0]).
-export([drain/0]).
-export([drain/1]).

-export_type([agent_id/0, capability/0, task/0, requirements/0, execute_opts/0,
              strategy/0, meta/0, trace_context/0]).

-type agent_id() :: binary().
-type capability() :: binary().
-type task() :: map().
-type strategy() :: round_robin | least_connections | weighted | consistent_hash
                  | p2c_ewma | q_learning.
-type requirements() :: #{capabilities => [capability()],
                          timeout => timeout(),
                          strategy => strategy(),
                          sticky_key => binary(),
                          task_class => term(),
                          idempotent => boolean(),
                          reply_to => pid(),
                          traceparent => binary(),
                          tracestate => binary(),
                          node => local | any}.
-type execute_opts() :: #{timeout => timeout(),
                          routing_timeout => pos_integer(),
                          max_retry_attempts => non_neg_integer(),
                          base_retry_delay => non_neg_integer(),
                          max_retry_delay => non_neg_integer(),
                          error_meta => boolean(),
                          cancellable => boolean()}.
-type meta() :: #{agent_id := agent_id(),
                  trace_id := binary(),
                  span_id := binary(),
                  latency_us := non_neg_integer() | undefined,
                  attempts := pos_integer(),
                  tried := [erlmcp_flow_router:attempt()],
                  %% in summary mode, the node a forwarded task ran on
                  node => node()}.
-type trace_context() :: erlmcp_flow_correlation_tracker:context().

%% @equiv execute(Task, Requirements, #{})
-spec execute(task(), requirements()) -> {ok, term(), meta()} | {error, term()}.
execute(Task, Requirements) ->
    execute(Task, Requirements, #{}).

%% @doc Sends `Task' to an agent holding every capability in `Requirements'
%% and waits for its answer, in the calling process.
%%
%% Requirements: `capabilities' (all must be held; default `[]', any agent),
%% `timeout' (ms per attempt or `infinity'; default the `timeouts.execution'
%% setting, or an adaptive one with `timeouts.adaptive'), `strategy'
%% (default the `load_balancer.strategy' setting), `sticky_key' (a binary:
%% consistent hashing routes equal keys to the same agent; default the task's
%% `id'), `task_class' (any term: Q-learning keeps separate values per class,
%% hashed into `q_learning.task_classes' classes), `idempotent' (default
%% true; `false' means exactly one attempt), `traceparent' (a W3C header:
%% the task joins that trace as a child of the caller's span; default a new
%% trace) and `tracestate' (passed on to agents unchanged). Opts override the `timeouts'
%% settings for this call: `timeout', `routing_timeout',
%% `max_retry_attempts', `base_retry_delay', `max_retry_delay'.
%%
%% A timed-out, dead or erring agent's task is retried on another agent (see
%% `erlmcp_flow_router'); `Meta' reports the `attempts' and, in `tried', each
%% failed one with its agent and reason, and the task's `trace_id' and
%% `span_id' (see `erlmcp_flow_correlation_tracker').
%%
%% Errors: `no_agents_available' (none holds the capabilities, or all their
%% breakers are open), `overloaded' (all at their bulkhead limit past the
%% routing timeout), `{no_available_agent, Attempts}' (every attempt failed);
%% with one attempt only (`idempotent => false'), that attempt's own error:
%% `execution_timeout', `{agent_down, Reason}', `{agent_error, Reason}' (the
%% agent answered `{error, Reason}'), `{bad_agent_reply, Term}'. And
%% `{badarg, What}'.
-spec execute(task(), requirements(), execute_opts()) ->
          {ok, term(), meta()} | {error, term()} | {error, term(), map()}.
execute(Task, Requirements, Opts) ->
    erlmcp_flow_forward:execute(Task, Requirements, Opts).

%% @doc Routes `Task' and returns as soon as it is dispatched. The answer
%% still settles the decision; with `reply_to => Pid' in the requirements,
%% `Pid' receives `{erlmcp_flow_result, TraceId, Answer}' where `Answer' is
%% what `execute/3' would have returned.
-spec route_task(task(), requirements()) ->
          {ok, agent_id(), trace_context()} | {error, term()}.
route_task(Task, Requirements) ->
    erlmcp_flow_router:route_task(Task, Requirements).

%% @doc Registers `Pid' as the agent `AgentId' with its capabilities. The
%% registration lasts until `unregister_agent/1' or the process's death.
-spec register_agent(agent_id(), pid(), [capability(), ...]) ->
          ok | {error, already_registered | not_started | erlmcp_flow_registry:badarg()}.
register_agent(AgentId, Pid, Capabilities) ->
    erlmcp_flow_registry:register_agent(AgentId, Pid, Capabilities).

%% @doc As `register_agent/3' with options: `#{weight => W}', a positive
%% number the `weighted' strategy multiplies the agent's share by (default 1);
%% `#{notify_unregister => true}': `Pid' is sent `{erlmcp_flow_unregistered,
%% AgentId}' when the registration is removed other than by its death
%% (`unregister_agent/1', or another node's holder of the id winning after a
%% partition). Another key is `{error, {badarg, {unknown_option, Key}}}'.
-spec register_agent(agent_id(), pid(), [capability(), ...], erlmcp_flow_registry:agent_opts()) ->
          ok | {error, already_registered | not_started | erlmcp_flow_registry:badarg()}.
register_agent(AgentId, Pid, Capabilities, Opts) ->
    erlmcp_flow_registry:register_agent(AgentId, Pid, Capabilities, Opts).

%% @doc Registers a swarm: `CoordinatorPid' answers the agent protocol on
%% behalf of its members (see `erlmcp_flow_swarm').
-spec register_swarm(agent_id(), pid(), [capability(), ...]) ->
          ok | {error, already_registered | not_started | erlmcp_flow_registry:badarg()}.
register_swarm(SwarmId, CoordinatorPid, Capabilities) ->
    erlmcp_flow_registry:register_swarm(SwarmId, CoordinatorPid, Capabilities).

%% @doc Removes an agent or swarm. Unknown ids are ignored.
-spec unregister_agent(agent_id()) -> ok | {error, not_started | {badarg, agent_id}}.
unregister_agent(AgentId) ->
    erlmcp_flow_registry:unregister_agent(AgentId).

%% @doc The pid of a registered agent or swarm.
-spec find_agent(agent_id()) -> {ok, pid()} | {error, not_found | not_started | {badarg, agent_id}}.
find_agent(AgentId) ->
    erlmcp_flow_registry:find_agent(AgentId).

%% @doc The pids of the agents and swarms holding `Capability'.
-spec find_agents_by_capability(capability()) ->
          [pid()] | {error, not_started | {badarg, capability}}.
find_agents_by_capability(Capability) ->
    erlmcp_flow_registry:find_agents_by_capability(Capability).

%% @doc The ids, sorted, of the agents and swarms holding all of
%% `Capabilities' (all of them for `[]').
-spec query_agents([capability()]) -> [agent_id()] | {error, not_started | {badarg, capabilities}}.
query_agents(Capabilities) ->
    erlmcp_flow_registry:query_agents(Capabilities).

%% @doc The number of tasks in flight on an agent; 0 for an unknown id.
-spec get_agent_load(agent_id()) -> non_neg_integer() | {error, not_started | {badarg, agent_id}}.
get_agent_load(AgentId) ->
    erlmcp_flow_registry:get_agent_load(AgentId).

%% @doc The live figures of an agent: its load `in_flight', tasks
%% `dispatched', `succeeded', `failed', `timed_out', `down', `abandoned',
%% `success_rate', `ewma_latency_us', latency percentiles `p50_us', `p95_us',
%% `p99_us' (an HDR histogram; `undefined' before the first answer), its
%% `weight', `breaker' state (`closed', `open', `half_open') and half-open
%% `probes' in flight.
-spec agent_stats(agent_id()) -> {ok, map()} | {error, not_found | not_started | {badarg, agent_id}}.
agent_stats(AgentId) ->
    erlmcp_flow_registry:agent_stats(AgentId).

%% @doc Node-wide figures (see `erlmcp_flow_metrics:stats/0'): registered
%% `agents', tasks `in_flight' (on every agent, including agents removed
%% since their tasks started) and `completed', `tasks_per_second',
%% Q-learning `episodes' and exploration rate `epsilon', `retries',
%% `fallbacks', `overloaded' answers, breaker transitions, the decision
%% latency histogram, the correlation store and the span export; and the
%% cluster as this node sees it: the `nodes' it routes to, the peers it
%% `suspected', the `partitions' (nodes it cannot reach now) and each
%% peer's `phi'; whether the node is `draining' (`drain/1').
%% `{error, not_started}' when the application is not running.
-spec stats() -> #{agents := non_neg_integer(), in_flight := non_neg_integer(),
                   episodes := non_neg_integer(), epsilon := float(),
                   draining => boolean(), nodes => [node()], suspected => [node()], partitions => [node()],
                   phi => #{node() => float()}, atom() => number()}
               | {error, not_started}.
stats() ->
    erlmcp_flow_metrics:stats().

%% @doc What routing state costs the Rust core, in bytes: `agents_bytes'
%% for every agent's own state (its hot cell, id, capabilities, Q row,
%% latency histogram and breaker; `bytes_per_agent' is their mean) and
%% `table_bytes' for the agent table's indexes, hot-cell array and hash
%% ring; `correlation_bytes' for the correlation store's `spans' (its slots,
%% indexes, queues and task summaries; `bytes_per_span' is their mean). The
%% Erlang processes and ETS tables are not counted here (see
%% `erlang:memory/0'). One pass over the agents and the spans, on a dirty
%% scheduler. `{error, not_started}' when the application is not running.
-spec memory() -> #{agents := non_neg_integer(), agents_bytes := non_neg_integer(),
                    table_bytes := non_neg_integer(), bytes_per_agent := float(),
                    spans := non_neg_integer(), correlation_bytes := non_neg_integer(),
                    bytes_per_span := float()}
                | {error, not_started}.
memory() ->
    case erlmcp_flow_registry:router_if_running() of
        undefined ->
            {error, not_started};
        Router ->
            {ok, #{agents := N, agents_bytes := B, spans := S, correlation_bytes := C} = M} =
                erlmcp_flow_nif:router_memory(Router),
            M#{bytes_per_agent => B / max(N, 1), bytes_per_span => C / max(S, 1)}
    end.

%% @doc The nodes whose agents this node sees and routes to: itself and
%% every connected node running erlmcp_flow (in the `pg' scope
%% `cluster.scope') that the failure detector does not suspect.
-spec nodes() -> [node()].
nodes() ->
    erlmcp_flow_cluster:nodes().

%% @doc Why an agent would be chosen for `Requirements' (its `capabilities'
%% and `task_class'): every candidate with its Q-learning state
%% `{LoadLevel, SuccessBucket, LatencyBucket, Class}', learned `q_value' and
%% `visits', live figures and `softmax' probability, best value first; and
%% the top three with their softmax confidence. `Requirements' are checked
%% as `execute/2' checks them.
-spec explain(requirements()) ->
          {ok, #{candidates := [map()], top := [{agent_id(), float()}]}} | {error, term()}.
explain(Requirements) ->
    erlmcp_flow_q_learning:explain(Requirements).

%% @doc `drain(#{})': waits up to 30 s.
-spec drain() -> ok | {error, {timeout, erlmcp_flow_drain:left()} | not_started}.
drain() ->
    drain(#{}).

%% @doc Drains this node before it restarts (a release that changes the NIF
%% is rolled out node by node this way): it takes no new task (`execute/2,3'
%% and `route_task/2' answer `{error, draining}', JSON-RPC -32011), leaves
%% routing on every node of the cluster, and returns `ok' once nothing is in
%% flight: tasks its callers routed anywhere, tasks other nodes' callers wait
%% for on its agents, quorum votes it runs. Nothing is cancelled. Options:
%% `timeout' (ms or `infinity', default 30000); past it the answer is
%% `{error, {timeout, #{in_flight := N, remote := N, votes := N}}}' and the
%% node stays drained. A drained node takes tasks again once the application
%% restarts (it rejoins the cluster then).
-spec drain(erlmcp_flow_drain:opts()) ->
          ok | {error, {timeout, erlmcp_flow_drain:left()} | not_started | {badarg, term()}}.
drain(Opts) ->
    erlmcp_flow_drain:drain(Opts).
