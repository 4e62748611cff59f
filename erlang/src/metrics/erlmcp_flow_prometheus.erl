%% @doc The Prometheus text exposition (format 0.0.4) of erlmcp_flow's
%% metrics: the node-wide figures of `erlmcp_flow_metrics:stats/0' and every
%% agent's, labelled `agent="Id"'. Times are in seconds, as Prometheus
%% expects.
-module(erlmcp_flow_prometheus).

%% API
-export([render/0]).
-export([render/2]).
-export([content_type/0]).

-define(PREFIX, "erlmcp_flow_").

%% @doc The exposition of the running application (empty when it is not
%% running).
-spec render() -> iodata().
render() ->
    case erlmcp_flow_metrics:stats() of
        {error, not_started} -> [];
        Stats -> render(Stats, erlmcp_flow_metrics:agents())
    end.

%% @doc The media type of the exposition.
-spec content_type() -> string().
content_type() ->
    "text/plain; version=0.0.4; charset=utf-8".

%% @doc The exposition of node-wide `Stats' and per-agent figures.
-spec render(erlmcp_flow_metrics:stats(), [{erlmcp_flow:agent_id(), map()}]) -> iodata().
render(Stats, Agents) ->
    G = fun(K) -> maps:get(K, Stats, 0) end,
    Node = [family(agents, gauge, "Registered agents and swarms.", [{[], G(agents)}]),
            family(in_flight, gauge, "Tasks in flight on every agent.", [{[], G(in_flight)}]),
            family(draining, gauge, "1 while this node drains (it takes no new task).",
                   [{[], case maps:get(draining, Stats, false) of true -> 1; false -> 0 end}]),
            family(tasks_total, counter,
                   "Tasks answered, by outcome: one per task, however many attempts it took.",
                   [{label("outcome", <<"ok">>), G(tasks_succeeded)},
                    {label("outcome", <<"error">>), G(tasks_failed)},
                    {label("outcome", <<"rejected">>), G(tasks_rejected)}]),
            family(attempts_total, counter,
                   "Attempts settled with an answer, a timeout or a dead agent "
                   "(a task with one retry counts 2).",
                   [{[], G(completed)}]),
            family(tasks_per_second, gauge, "Tasks answered per second over the last interval.",
                   [{[], G(tasks_per_second)}]),
            family(retries_total, counter, "Attempts after a failed one, on agents.",
                   [{[], G(retries)}]),
            family(fallbacks_total, counter, "Attempts on a fallback swarm.",
                   [{[], G(fallbacks)}]),
            family(overloaded_total, counter, "Tasks refused because every bulkhead was full.",
                   [{[], G(overloaded)}]),
            family(breaker_transitions_total, counter, "Circuit breaker transitions by state entered.",
                   [{label("to", <<"open">>), G(breaker_opened)},
                    {label("to", <<"half_open">>), G(breaker_half_opened)},
                    {label("to", <<"closed">>), G(breaker_closed)}]),
            decision_latency(Stats),
            family(q_learning_episodes_total, counter, "Outcomes the Q-learner learned from.",
                   [{[], G(episodes)}]),
            family(q_learning_epsilon, gauge, "The Q-learner's exploration rate.",
                   [{[], G(epsilon)}]),
            family(correlation_entries, gauge, "Spans in the correlation store.",
                   [{[], G(correlation_entries)}]),
            family(correlation_open, gauge, "Spans not closed yet: tasks and attempts in progress.",
                   [{[], G(correlation_open)}]),
            family(correlation_evictions_total, counter,
                   "Finished spans evicted from the correlation store at its cap.",
                   [{[], G(correlation_evicted)}]),
            family(correlation_expired_total, counter,
                   "Spans dropped from the correlation store past their TTL.",
                   [{[], G(correlation_expired)}]),
            family(spans_exported_total, counter, "Spans exported as OTLP/JSON.",
                   [{[], G(spans_exported)}]),
            family(export_failures_total, counter, "Span export batches that failed.",
                   [{[], G(export_failures)}]),
            family(spans_lost_total, counter, "Spans in export batches that failed.",
                   [{[], G(spans_lost)}]),
            family(export_dropped_total, counter,
                   "Finished spans the export queue had no room for.",
                   [{[], G(export_dropped)}]),
            family(cluster_nodes, gauge, "Nodes this node routes to, itself included.",
                   [{[], length(maps:get(nodes, Stats, [node()]))}]),
            family(partitioned_nodes, gauge,
                   "Nodes this node cannot reach now (suspected or disconnected).",
                   [{[], length(maps:get(partitions, Stats, []))}]),
            family(node_phi, gauge, "The failure detector's phi of each peer node.",
                   [{label("node", atom_to_binary(N)), Phi}
                    || {N, Phi} <- lists:sort(maps:to_list(maps:get(phi, Stats, #{})))]),
            family(node_suspected, gauge, "1 for a peer node the failure detector suspects.",
                   [{label("node", atom_to_binary(N)), 1} || N <- maps:get(suspected, Stats, [])])],
    [Node, agent_families(Agents, erlmcp_flow_config:get(metrics, max_agent_series))].

%%====================================================================
%% Internal functions
%%====================================================================

decision_latency(Stats) ->
    G = fun(K) -> maps:get(K, Stats, 0) end,
    Name = [?PREFIX, "decision_latency_seconds"],
    [help(Name, "Duration of a routing decision (one decision in 64 is timed)."),
     type(Name, summary),
     [sample(Name, label("quantile", Q), seconds(G(K)))
      || {Q, K} <- [{"0.5", decision_p50_us}, {"0.9", decision_p90_us},
                    {"0.99", decision_p99_us}, {"1", decision_max_us}]],
     sample([Name, "_sum"], [], seconds(G(decision_sum_us))),
     sample([Name, "_count"], [], G(decision_samples))].

%% Per-agent series for `Max' agents at most (the busiest, by tasks
%% dispatched); the others are added up in the `unlisted_agents' families,
%% so that the exposition stays bounded whatever number registers.
agent_families(Agents, Max) when length(Agents) =< Max ->
    [agent_families(Agents),
     family(unlisted_agents, gauge, "Agents whose series are left out (metrics.max_agent_series).",
            [{[], 0}])];
agent_families(Agents, Max) ->
    Busiest = lists:sort(fun({_, A}, {_, B}) -> maps:get(dispatched, A, 0) >= maps:get(dispatched, B, 0) end,
                         Agents),
    {Listed, Others} = lists:split(Max, Busiest),
    Sum = fun(F) -> lists:sum([F(S) || {_, S} <- Others]) end,
    Get = fun(K) -> fun(S) -> maps:get(K, S, 0) end end,
    [agent_families(lists:keysort(1, Listed)),
     family(unlisted_agents, gauge, "Agents whose series are left out (metrics.max_agent_series).",
            [{[], length(Others)}]),
     family(unlisted_agents_in_flight, gauge, "Tasks in flight on the unlisted agents.",
            [{[], Sum(Get(in_flight))}]),
     family(unlisted_agents_tasks_total, counter, "Tasks dispatched to the unlisted agents.",
            [{[], Sum(Get(dispatched))}]),
     family(unlisted_agents_failures_total, counter,
            "Tasks of the unlisted agents that failed, timed out or found the agent dead.",
            [{[], Sum(fun(S) -> maps:get(failed, S, 0) + maps:get(timed_out, S, 0) + maps:get(down, S, 0) end)}]),
     family(unlisted_agents_rejected_total, counter, "Tasks the unlisted agents refused as the caller's error.",
            [{[], Sum(Get(rejected))}])].

%% Each agent's label is rendered once, then shared by its samples.
agent_families(Agents0) ->
    Agents = [{label("agent", Id), S} || {Id, S} <- Agents0],
    Each = fun(Key, F) ->
                   [{L, F(S)} || {L, S} <- Agents, defined(maps:get(Key, S, undefined))]
           end,
    Field = fun(K) -> fun(S) -> maps:get(K, S) end end,
    Failures = fun(S) -> maps:get(failed, S) + maps:get(timed_out, S) + maps:get(down, S) end,
    Quantiles = [{label("quantile", Q), K}
                 || {Q, K} <- [{"0.5", p50_us}, {"0.95", p95_us}, {"0.99", p99_us}]],
    States = [{label("state", atom_to_binary(St)), St} || St <- [closed, open, half_open]],
    [family(agent_in_flight, gauge, "Tasks in flight on the agent.",
            Each(in_flight, Field(in_flight))),
     family(agent_tasks_total, counter, "Tasks dispatched to the agent.",
            Each(dispatched, Field(dispatched))),
     family(agent_failures_total, counter, "Tasks that failed, timed out or found the agent dead.",
            Each(dispatched, Failures)),
     family(agent_rejected_total, counter,
            "Tasks the agent refused as the caller's error (not failures of the agent).",
            Each(rejected, Field(rejected))),
     family(agent_success_ratio, gauge, "The agent's success rate.",
            Each(success_rate, Field(success_rate))),
     family(agent_latency_ewma_seconds, gauge, "Exponentially weighted mean latency.",
            Each(ewma_latency_us, fun(S) -> seconds(maps:get(ewma_latency_us, S)) end)),
     family(agent_latency_seconds, gauge, "Latency percentiles of the agent (HDR histogram).",
            [{[L, $,, QL], seconds(maps:get(K, S))}
             || {L, S} <- Agents, {QL, K} <- Quantiles, defined(maps:get(K, S, undefined))]),
     family(agent_breaker_state, gauge, "1 for the agent's circuit breaker state, 0 for the others.",
            [{[L, $,, SL], bool(maps:get(breaker, S) =:= St)}
             || {L, S} <- Agents, maps:is_key(breaker, S), {SL, St} <- States])].

defined(undefined) -> false;
defined(_) -> true.

bool(true) -> 1;
bool(false) -> 0.

seconds(Us) when is_number(Us) -> Us / 1.0e6.

family(Name, Type, Help, Samples) ->
    Full = [?PREFIX, atom_to_list(Name)],
    [help(Full, Help), type(Full, Type), [sample(Full, L, V) || {L, V} <- Samples]].

help(Name, Text) -> ["# HELP ", Name, $\s, Text, $\n].
type(Name, Type) -> ["# TYPE ", Name, $\s, atom_to_list(Type), $\n].

%% Labels come rendered (label/2, joined by commas); [] for none.
sample(Name, [], Value) ->
    [Name, $\s, value(Value), $\n];
sample(Name, Labels, Value) ->
    [Name, ${, Labels, "} ", value(Value), $\n].

label(Key, Value) ->
    [Key, "=\"", escape(Value), $"].

value(V) when is_integer(V) -> integer_to_list(V);
value(V) when is_float(V) -> float_to_list(V, [short]).

%% Label values: backslash, double quote and line feed escaped.
escape(V) when is_list(V) -> V;
escape(V) when is_binary(V) ->
    case plain(V) of
        true -> V;
        false -> escape_chars(V)
    end.

plain(<<>>) -> true;
plain(<<C, _/binary>>) when C =:= $\\; C =:= $"; C =:= $\n -> false;
plain(<<_, Rest/binary>>) -> plain(Rest).

escape_chars(V) ->
    << <<(case C of
              $\\ -> <<"\\\\">>;
              $" -> <<"\\\"">>;
              $\n -> <<"\\n">>;
              _ -> <<C>>
          end)/binary>> || <<C>> <= V >>.
