%% @doc Node-wide metrics of erlmcp_flow.
%%
%% Most figures live in the Rust core and are read on demand: agents, tasks
%% in flight, attempts completed, breaker transitions, the decision latency
%% histogram (one decision in 64 is timed), the correlation store's size,
%% evictions and expirations. This module adds what the Erlang side counts
%% (tasks answered by outcome, `retries', `fallbacks', `overloaded' answers,
%% exported spans and export failures, in an OTP `counters' array so that
%% counting takes no message) and, once every `metrics.interval_ms', samples
%% the tasks answered into `tasks_per_second' and sweeps the correlation
%% store's expired spans.
%%
%% `stats/0' and `erlmcp_flow:stats/0' return them as one map;
%% `erlmcp_flow_prometheus' renders them with every agent's figures for
%% `GET /metrics' (`erlmcp_flow_metrics_http').
-module(erlmcp_flow_metrics).
-behaviour(gen_server).

%% API
-export([start_link/0]).
-export([incr/1]).
-export([add/2]).
-export([stats/0]).
-export([agents/0]).
-export([tick/0]).
-export([tasks_per_second/4]).
-export([history/0]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-export_type([counter/0, stats/0]).

-type counter() :: retries | fallbacks | overloaded | spans_exported | export_failures
                 | spans_lost | tasks_succeeded | tasks_failed | tasks_rejected.
-type stats() :: #{draining => boolean(), nodes => [node()], suspected => [node()], partitions => [node()],
                   phi => #{node() => float()}, atom() => number()}.

-define(COUNTERS_KEY, {?MODULE, counters}).
%% Slots of the counters array; the last holds tasks per second x 1000.
-define(SLOTS, [retries, fallbacks, overloaded, spans_exported, export_failures, spans_lost,
                tasks_succeeded, tasks_failed, tasks_rejected]).
-define(RATE_SLOT, 10).

-record(state, {interval :: pos_integer(),
                completed :: non_neg_integer(),
                at :: integer(),
                %% the counters at each sample, newest first, for rates over
                %% the last few minutes (the status page's charts)
                history = [] :: [{integer(), #{atom() => non_neg_integer()}}]}).

%% Samples kept: 5 minutes at the default interval of 1 s.
-define(HISTORY, 300).
%% The counters a sample keeps.
-define(RATES, [tasks_succeeded, tasks_failed, tasks_rejected, retries, fallbacks, overloaded]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Adds one to a counter. A no-op while the application is not running.
-spec incr(counter()) -> ok.
incr(Name) ->
    add(Name, 1).

%% @doc Adds `N' to a counter.
-spec add(counter(), non_neg_integer()) -> ok.
add(Name, N) ->
    case persistent_term:get(?COUNTERS_KEY, undefined) of
        undefined -> ok;
        Ref -> counters:add(Ref, slot(Name), N)
    end.

%% @doc The node-wide figures: `agents', tasks `in_flight', tasks answered
%% (`tasks_succeeded', `tasks_failed', and `tasks_rejected' for tasks an
%% agent refused as the caller's error: one per task, however many attempts
%% it took), attempts `completed' (a task with one retry counts 2),
%% `tasks_per_second' (tasks answered, over the last interval), Q-learning `episodes' and
%% `epsilon', `retries', `fallbacks', `overloaded', breaker transitions
%% (`breaker_opened', `breaker_half_opened', `breaker_closed'), the sampled
%% decision latency (`decision_p50_us', `decision_p90_us',
%% `decision_p99_us', `decision_max_us', `decision_sum_us',
%% `decision_samples'), the correlation store (`correlation_entries',
%% `correlation_open', `correlation_evicted', `correlation_expired') and the span export
%% (`spans_exported', `export_failures', `spans_lost' to failed exports,
%% `export_dropped' for want of room in the export queue), and whether the
%% node is `draining' (`erlmcp_flow:drain/1').
-spec stats() -> stats() | {error, not_started}.
stats() ->
    case erlmcp_flow_registry:router_if_running() of
        undefined -> {error, not_started};
        Router -> stats(Router)
    end.

stats(Router) ->
    {ok, Core0} = erlmcp_flow_nif:router_stats(Router),
    Core = maps:merge(Core0, cluster()),
    case persistent_term:get(?COUNTERS_KEY, undefined) of
        undefined ->
            maps:merge(maps:from_list([{K, 0} || K <- ?SLOTS]),
                       Core#{tasks_per_second => 0.0});
        Ref ->
            Counts = maps:from_list([{K, counters:get(Ref, slot(K))} || K <- ?SLOTS]),
            maps:merge(Counts, Core#{tasks_per_second => counters:get(Ref, ?RATE_SLOT) / 1000})
    end.

%% The cluster as this node sees it: the nodes it routes to, the peers the
%% failure detector suspects with every peer's phi, and the nodes it cannot
%% reach (suspected or disconnected).
cluster() ->
    Peers = erlmcp_flow_failure_detector:peers(),
    #{draining => erlmcp_flow_registry:draining(),
      nodes => erlmcp_flow_cluster:nodes(),
      suspected => [N || #{node := N, suspected := true} <- Peers],
      partitions => erlmcp_flow_byzantine_detector:detect_partitions(),
      phi => maps:from_list([{N, Phi} || #{node := N, phi := Phi} <- Peers])}.

%% @doc Every registered agent and swarm with its live figures (see
%% `erlmcp_flow:agent_stats/1'), sorted by id.
-spec agents() -> [{erlmcp_flow:agent_id(), map()}].
agents() ->
    lists:foldr(fun({Id, _Pid, Kind, _Caps}, Acc) ->
                        case erlmcp_flow_registry:agent_stats(Id) of
                            {ok, S} -> [{Id, S#{kind => Kind}} | Acc];
                            {error, _} -> Acc  % unregistered meanwhile
                        end
                end, [], erlmcp_flow_registry:list_agents()).

%% @doc The node-wide rates (per second) between consecutive samples over
%% the last 300 samples (5 minutes at `metrics.interval_ms' 1 000), oldest
%% first: `#{t => SystemTimeMs, tasks, failed, retries, fallbacks,
%% overloaded}'.
-spec history() -> [#{t := integer(), atom() => float()}] | {error, not_started}.
history() ->
    erlmcp_flow_call:call(?MODULE, history, 5000).

%% @doc Samples the rate and sweeps the correlation store now, rather than
%% at the end of the interval; returns the spans swept.
-spec tick() -> non_neg_integer().
tick() ->
    gen_server:call(?MODULE, tick).

%% @doc The rate between two samples of a counter taken at two monotonic
%% times in milliseconds; 0.0 over an empty interval.
-spec tasks_per_second(non_neg_integer(), integer(), non_neg_integer(), integer()) -> float().
tasks_per_second(_Before, At, _After, At) ->
    0.0;
tasks_per_second(Before, At0, After, At1) when At1 > At0 ->
    max(After - Before, 0) * 1000 / (At1 - At0);
tasks_per_second(_Before, _At0, _After, _At1) ->
    0.0.

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    %% terminate/2 runs at shutdown: nothing of it stays in persistent_term
    process_flag(trap_exit, true),
    Ref = counters:new(?RATE_SLOT, [write_concurrency]),
    persistent_term:put(?COUNTERS_KEY, Ref),
    Interval = erlmcp_flow_config:get(metrics, interval_ms),
    erlang:send_after(Interval, self(), tick),
    {ok, #state{interval = Interval, completed = tasks(Ref), at = now_ms()}}.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(history, _From, #state{history = H} = State) ->
    {reply, rates(lists:reverse(H)), State};
handle_call(tick, _From, State) ->
    {Swept, State1} = sample(State),
    {reply, Swept, State1};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(tick, #state{interval = Interval} = State) ->
    {_, State1} = sample(State),
    erlang:send_after(Interval, self(), tick),
    {noreply, State1};
handle_info(_Info, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    _ = persistent_term:erase(?COUNTERS_KEY),
    ok.

%%====================================================================
%% Internal functions
%%====================================================================

sample(#state{completed = Before, at = At0} = State) ->
    Ref = persistent_term:get(?COUNTERS_KEY),
    After = tasks(Ref),
    At1 = now_ms(),
    Rate = tasks_per_second(Before, At0, After, At1),
    counters:put(Ref, ?RATE_SLOT, round(Rate * 1000)),
    Swept = erlmcp_flow_correlation_tracker:sweep(),
    Sample = {os:system_time(millisecond), maps:from_list([{K, counters:get(Ref, slot(K))} || K <- ?RATES])},
    History = lists:sublist([Sample | State#state.history], ?HISTORY + 1),
    {Swept, State#state{completed = After, at = At1, history = History}}.

%% Per-second rates between consecutive samples.
rates([{T0, C0}, {T1, C1} = Next | Rest]) when T1 > T0 ->
    Per = fun(K) -> max(maps:get(K, C1) - maps:get(K, C0), 0) * 1000 / (T1 - T0) end,
    [#{t => T1, tasks => Per(tasks_succeeded) + Per(tasks_failed) + Per(tasks_rejected),
       failed => Per(tasks_failed), rejected => Per(tasks_rejected),
       retries => Per(retries), fallbacks => Per(fallbacks), overloaded => Per(overloaded)}
     | rates([Next | Rest])];
rates([_, Next | Rest]) ->
    rates([Next | Rest]);
rates(_) ->
    [].

%% Tasks answered so far.
tasks(Ref) ->
    counters:get(Ref, slot(tasks_succeeded)) + counters:get(Ref, slot(tasks_failed))
        + counters:get(Ref, slot(tasks_rejected)).

now_ms() ->
    erlang:monotonic_time(millisecond).

slot(retries) -> 1;
slot(fallbacks) -> 2;
slot(overloaded) -> 3;
slot(spans_exported) -> 4;
slot(export_failures) -> 5;
slot(spans_lost) -> 6;
slot(tasks_succeeded) -> 7;
slot(tasks_failed) -> 8;
slot(tasks_rejected) -> 9.
