%% @doc The demo: a node with 60 simulated agents and 5 swarms of different
%% speed and reliability (fast, normal, slow, flaky; latency growing with
%% load) routes the same closed-loop workload through `erlmcp_flow:execute/2'
%% with every strategy this build has, and prints one row per strategy.
%% While it runs, the fast agents slow down (from the task at a third of the
%% run, to 30 ms) and recover (from two thirds on): the table's last columns
%% are the mean latency of the tasks started while they were slow and after
%% they recovered, which shows which strategies notice each change. The demo
%% runs in seconds, so it sets Q-learning's `stale_after_ms' and p2c's
%% `ewma_decay_ms' to 250 ms (3 s in production), the same compression of
%% time as its millisecond agents.
%%
%% The Q-table is reset before each strategy, so q_learning starts from
%% nothing like the others. Then one task on the flaky agents, under a
%% caller's traceparent, shows its spans (the task and each attempt) from the
%% correlation store, and a line of node-wide metrics closes the run.
%%
%% `make demo' runs `erlmcp_flow_demo:main()'.
-module(erlmcp_flow_demo).

%% API
-export([main/0]).
-export([run/1]).
-export([format_table/1]).

-export_type([row/0, traced/0]).

-type row() :: #{strategy := atom(), tasks := non_neg_integer(), ok := non_neg_integer(),
                 mean_ms := float(), p50_ms := float(), p99_ms := float(),
                 throughput := float(),
                 %% mean latency of the tasks started while the fast agents were
                 %% slowed down, and after they recovered
                 slowed_ms := float(), recovered_ms := float()}.

%% A traced task: the caller's traceparent, the task's Meta, its spans.
-type traced() :: {binary(), map(), [erlmcp_flow_correlation_tracker:span()]}.

-define(CAP, <<"compute">>).

%% Agent groups: {Name, Count, Profile}.
groups() ->
    [{fast, 15, #{mean_ms => 4, load_factor => 0.3}},
     {normal, 20, #{mean_ms => 15, load_factor => 0.3}},
     {slow, 15, #{mean_ms => 50, load_factor => 0.5}},
     {flaky, 10, #{mean_ms => 8, load_factor => 0.3, fail_rate => 0.2}}].

%% The group that slows down at a third of the run and recovers at two
%% thirds, and its speed meanwhile.
-define(CHANGING, fast).
-define(SLOWED, #{mean_ms => 30}).
%% The demo's time scale (see the module doc).
-define(DEMO_AGING_MS, 250).

-define(SWARMS, 5).
-define(SWARM_MEMBERS, 3).
-define(SWARM_PROFILE, #{mean_ms => 12, load_factor => 0.3}).

%% @doc Runs the demo with its default workload, prints the table and halts
%% the node: status 0 when every strategy ran.
-spec main() -> no_return().
main() ->
    %% the demo's flaky agents open breakers; the table is what it shows
    ok = logger:set_primary_config(level, error),
    Status = try
                 _ = run(#{tasks => 6000, concurrency => 40, timeout => 1000}),
                 0
             catch
                 Class:Reason:Stack ->
                     io:format(standard_error, "demo failed: ~p:~p~n~p~n", [Class, Reason, Stack]),
                     1
             end,
    erlang:halt(Status).

%% @doc Starts the application and the agents, runs the workload once per
%% strategy, prints the table, the traced task and the node's figures, stops
%% the agents it started and returns the rows and the traced task.
-spec run(#{tasks := pos_integer(), concurrency := pos_integer(), timeout := pos_integer()}) ->
          #{rows := [row()], trace := traced()}.
run(#{tasks := Tasks, concurrency := Conc, timeout := Timeout}) ->
    Restore = demo_time_scale(),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    process_flag(trap_exit, true),
    Agents = start_agents(),
    {Swarms, Members} = lists:unzip(start_swarms()),
    io:format("erlmcp_flow demo: ~b agents (~ts) and ~b swarms of ~b members; "
              "~b tasks, ~b concurrent callers, ~b ms timeout;~n"
              "the ~s agents slow to ~b ms from task ~b and recover from task ~b~n~n",
              [length(Agents), describe_groups(), length(Swarms), ?SWARM_MEMBERS,
               Tasks, Conc, Timeout, ?CHANGING, maps:get(mean_ms, ?SLOWED), Tasks div 3,
               2 * Tasks div 3]),
    Changing = [A || {?CHANGING, A} <- Agents],
    Rows = [run_strategy(S, Tasks, Conc, Timeout, Changing)
            || S <- erlmcp_flow_requirements:strategies()],
    io:put_chars(format_table(Rows)),
    Trace = traced_task(),
    print_trace(Trace),
    print_stats(erlmcp_flow:stats()),
    [ok = erlmcp_flow_swarm:stop(S) || S <- Swarms],
    [ok = erlmcp_flow_agent:stop(A) || {_, A} <- Agents],
    [ok = erlmcp_flow_agent:stop(A) || A <- lists:append(Members)],
    Restore(),
    #{rows => Rows, trace => Trace}.

%% @doc The rows as an aligned text table.
-spec format_table([row()]) -> iodata().
format_table(Rows) ->
    Header = io_lib:format("~-18s ~7s ~9s ~9s ~9s ~9s ~10s ~11s ~11s~n",
                           ["strategy", "tasks", "success", "mean ms", "p50 ms", "p99 ms",
                            "tasks/s", "slowed ms", "recovered"]),
    [Header |
     [io_lib:format("~-18s ~7b ~8.2f% ~9.2f ~9.2f ~9.2f ~10b ~11.2f ~11.2f~n",
                    [S, N, 100 * Ok / max(N, 1), Mean, P50, P99, round(Tput), Slowed,
                     Recovered])
      || #{strategy := S, tasks := N, ok := Ok, mean_ms := Mean, p50_ms := P50,
           p99_ms := P99, throughput := Tput, slowed_ms := Slowed,
           recovered_ms := Recovered} <- Rows]].

%% Sets the demo's aging time scale (when the application is not running
%% yet, so that its router takes it); returns how to put the settings back.
demo_time_scale() ->
    _ = application:load(erlmcp_flow),
    Old = [{K, application:get_env(erlmcp_flow, K)} || K <- [q_learning, load_balancer]],
    case whereis(erlmcp_flow_sup) of
        undefined ->
            Q = case application:get_env(erlmcp_flow, q_learning) of
                    {ok, QM} -> QM;
                    undefined -> #{}
                end,
            LB = case application:get_env(erlmcp_flow, load_balancer) of
                     {ok, LM} -> LM;
                     undefined -> #{}
                 end,
            ok = application:set_env(erlmcp_flow, q_learning,
                                     Q#{stale_after_ms => ?DEMO_AGING_MS}),
            ok = application:set_env(erlmcp_flow, load_balancer,
                                     LB#{ewma_decay_ms => ?DEMO_AGING_MS});
        _ ->
            ok
    end,
    fun() ->
            lists:foreach(fun({K, undefined}) -> application:unset_env(erlmcp_flow, K);
                             ({K, {ok, V}}) -> application:set_env(erlmcp_flow, K, V)
                          end, Old)
    end.

%%====================================================================
%% Internal functions
%%====================================================================

describe_groups() ->
    lists:join(", ", [io_lib:format("~b ~s", [N, G]) || {G, N, _} <- groups()]).

%% Every agent with its group: [{Group, Pid}].
start_agents() ->
    lists:append(
      [[begin
            Id = iolist_to_binary(io_lib:format("~s-~2..0b", [G, I])),
            {ok, Pid} = erlmcp_flow_sim_agent:start_link(Id, [?CAP, atom_to_binary(G)],
                                                         P#{seed => erlang:phash2(Id)}),
            {G, Pid}
        end || I <- lists:seq(1, N)] || {G, N, P} <- groups()]).

%% The profile a group's agents started with.
profile(G) ->
    {G, _, P} = lists:keyfind(G, 1, groups()),
    P.

start_swarms() ->
    [begin
         Members = [element(2, {ok, _} = erlmcp_flow_sim_agent:start_link(
                                           ?SWARM_PROFILE#{seed => S * 100 + M}))
                    || M <- lists:seq(1, ?SWARM_MEMBERS)],
         Id = iolist_to_binary(io_lib:format("swarm-~b", [S])),
         {ok, Pid} = erlmcp_flow_swarm:start_link(Id, [?CAP, <<"swarm">>], Members),
         {Pid, Members}
     end || S <- lists:seq(1, ?SWARMS)].

run_strategy(Strategy, Tasks, Conc, Timeout, Changing) ->
    %% Every strategy starts from the same blank table: the learner learns
    %% from every outcome, so q_learning would otherwise profit from the runs
    %% before it. The changing agents start at their own speed.
    ok = erlmcp_flow_q_learning:reset(),
    [ok = erlmcp_flow_sim_agent:set_profile(A, profile(?CHANGING)) || A <- Changing],
    Parent = self(),
    Per = Tasks div Conc,
    %% tasks started so far: the callers that start task Tasks/3 and 2Tasks/3
    %% change the agents, exactly once each
    Started = atomics:new(1, []),
    Phase = fun() ->
                    case atomics:add_get(Started, 1, 1) of
                        N when N =:= Per * Conc div 3 ->
                            [ok = erlmcp_flow_sim_agent:set_profile(A, ?SLOWED) || A <- Changing],
                            slowed;
                        N when N =:= 2 * Per * Conc div 3 ->
                            [ok = erlmcp_flow_sim_agent:set_profile(A, profile(?CHANGING))
                             || A <- Changing],
                            recovered;
                        N when N > 2 * Per * Conc div 3 -> recovered;
                        N when N > Per * Conc div 3 -> slowed;
                        _ -> before
                    end
            end,
    T0 = erlang:monotonic_time(microsecond),
    Callers = [spawn_link(fun() -> Parent ! {done, self(), caller(Strategy, Per, Timeout, Phase)} end)
               || _ <- lists:seq(1, Conc)],
    Results = lists:append([receive {done, C, R} -> R end || C <- Callers]),
    Elapsed = erlang:monotonic_time(microsecond) - T0,
    Lat = lists:sort([L || {_, L, _} <- Results]),
    N = length(Results),
    Mean = fun(Which) ->
                   In = [L || {_, L, P} <- Results, P =:= Which],
                   lists:sum(In) / max(length(In), 1) / 1000
           end,
    #{strategy => Strategy, tasks => N,
      ok => length([ok || {ok, _, _} <- Results]),
      mean_ms => lists:sum(Lat) / max(N, 1) / 1000,
      p50_ms => percentile(Lat, 0.50) / 1000,
      p99_ms => percentile(Lat, 0.99) / 1000,
      throughput => N / (Elapsed / 1.0e6),
      slowed_ms => Mean(slowed),
      recovered_ms => Mean(recovered)}.

caller(Strategy, N, Timeout, Phase) ->
    Req = #{capabilities => [?CAP], strategy => Strategy, timeout => Timeout},
    [begin
         P = Phase(),
         T0 = erlang:monotonic_time(microsecond),
         Answer = erlmcp_flow:execute(#{id => I}, Req),
         Lat = erlang:monotonic_time(microsecond) - T0,
         {element(1, Answer), Lat, P}
     end || I <- lists:seq(1, N)].

%% Runs tasks on the flaky agents, each under a new caller's traceparent,
%% until one needed a retry (or 200 tasks went by); returns that task's
%% traceparent, `Meta' and spans in parent order.
traced_task() ->
    traced_task(200).

traced_task(Left) ->
    T = erlmcp_flow_correlation_tracker,
    Header = T:format_traceparent(#{trace_id => T:generate_trace_id(),
                                    span_id => T:generate_span_id(), trace_flags => 1}),
    Req = #{capabilities => [<<"flaky">>], traceparent => Header, strategy => round_robin},
    {ok, _, Meta} = erlmcp_flow:execute(#{type => review, id => Left}, Req,
                                        #{base_retry_delay => 1}),
    case Meta of
        #{attempts := N} when N < 2, Left > 1 ->
            traced_task(Left - 1);
        #{trace_id := TraceId} ->
            {ok, Chain} = T:get_trace_chain(TraceId),
            {Header, Meta, Chain}
    end.

print_trace({Header, #{attempts := N}, Chain}) ->
    io:format("~none task on the flaky agents, under traceparent ~s:~n"
              "its ~b spans in parent order (~b attempts)~n", [Header, length(Chain), N]),
    _ = [io:format("  ~-10s span ~s  parent ~s  ~-9s ~-8s ~7.2f ms~n",
                   [case A of 0 -> "task"; _ -> "attempt " ++ integer_to_list(A) end,
                    S, P, agent_name(Agent), O, (E - St) / 1000])
         || #{attempt := A, span_id := S, parent_span_id := P, agent_id := Agent,
              outcome := O, start_us := St, end_us := E} <- Chain],
    ok.

agent_name(undefined) -> "-";
agent_name(Id) -> Id.

print_stats(S) ->
    #{in_flight := InFlight, completed := Done, retries := Retries, fallbacks := Fallbacks,
      breaker_opened := Opened, decision_p50_us := P50, decision_p99_us := P99,
      correlation_entries := Spans, correlation_open := Open,
      correlation_evicted := Evicted} = S,
    io:format("~nnode: ~b attempts completed, ~b retries, ~b fallbacks to swarms, "
              "~b breaker openings;~n"
              "      decision p50 ~b us, p99 ~b us; correlation store: ~b spans, "
              "~b open, ~b evicted; in flight now: ~b~n",
              [Done, Retries, Fallbacks, Opened, P50, P99, Spans, Open, Evicted, InFlight]).

percentile([], _) -> 0.0;
percentile(Sorted, P) ->
    Index = max(1, min(length(Sorted), round(P * length(Sorted)))),
    float(lists:nth(Index, Sorted)).
