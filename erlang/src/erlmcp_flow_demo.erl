%% @doc The demo: a node with 60 simulated agents and 5 swarms of different
%% speed and reliability (fast, normal, slow, flaky; latency growing with
%% load) routes the same closed-loop workload through `erlmcp_flow:execute/2'
%% with every strategy this build has, and prints one row per strategy.
%% The Q-table is reset before each strategy, so q_learning starts from
%% nothing like the others.
%%
%% `make demo' runs `erlmcp_flow_demo:main()'.
-module(erlmcp_flow_demo).

%% API
-export([main/0]).
-export([run/1]).
-export([format_table/1]).

-export_type([row/0]).

-type row() :: #{strategy := atom(), tasks := non_neg_integer(), ok := non_neg_integer(),
                 mean_ms := float(), p50_ms := float(), p99_ms := float(),
                 throughput := float()}.

-define(CAP, <<"compute">>).

%% Agent groups: {Name, Count, Profile}.
groups() ->
    [{fast, 15, #{mean_ms => 4, load_factor => 0.3}},
     {normal, 20, #{mean_ms => 15, load_factor => 0.3}},
     {slow, 15, #{mean_ms => 50, load_factor => 0.5}},
     {flaky, 10, #{mean_ms => 8, load_factor => 0.3, fail_rate => 0.2}}].

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
                 _ = run(#{tasks => 4000, concurrency => 40, timeout => 1000}),
                 0
             catch
                 Class:Reason:Stack ->
                     io:format(standard_error, "demo failed: ~p:~p~n~p~n", [Class, Reason, Stack]),
                     1
             end,
    erlang:halt(Status).

%% @doc Starts the application and the agents, runs the workload once per
%% strategy, prints the table, stops the agents it started and returns the rows.
-spec run(#{tasks := pos_integer(), concurrency := pos_integer(), timeout := pos_integer()}) ->
          [row()].
run(#{tasks := Tasks, concurrency := Conc, timeout := Timeout}) ->
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    process_flag(trap_exit, true),
    Agents = start_agents(),
    {Swarms, Members} = lists:unzip(start_swarms()),
    io:format("erlmcp_flow demo: ~b agents (~ts) and ~b swarms of ~b members; "
              "~b tasks, ~b concurrent callers, ~b ms timeout~n~n",
              [length(Agents), describe_groups(), length(Swarms), ?SWARM_MEMBERS,
               Tasks, Conc, Timeout]),
    Rows = [run_strategy(S, Tasks, Conc, Timeout) || S <- erlmcp_flow_router:strategies()],
    io:put_chars(format_table(Rows)),
    #{in_flight := InFlight} = erlmcp_flow:stats(),
    io:format("~nin flight after the runs: ~b~n", [InFlight]),
    [ok = erlmcp_flow_swarm:stop(S) || S <- Swarms],
    [ok = erlmcp_flow_agent:stop(A) || A <- Agents ++ lists:append(Members)],
    Rows.

%% @doc The rows as an aligned text table.
-spec format_table([row()]) -> iodata().
format_table(Rows) ->
    Header = io_lib:format("~-18s ~7s ~9s ~9s ~9s ~9s ~10s~n",
                           ["strategy", "tasks", "success", "mean ms", "p50 ms", "p99 ms",
                            "tasks/s"]),
    [Header |
     [io_lib:format("~-18s ~7b ~8.2f% ~9.2f ~9.2f ~9.2f ~10b~n",
                    [S, N, 100 * Ok / max(N, 1), Mean, P50, P99, round(Tput)])
      || #{strategy := S, tasks := N, ok := Ok, mean_ms := Mean, p50_ms := P50,
           p99_ms := P99, throughput := Tput} <- Rows]].

%%====================================================================
%% Internal functions
%%====================================================================

describe_groups() ->
    lists:join(", ", [io_lib:format("~b ~s", [N, G]) || {G, N, _} <- groups()]).

start_agents() ->
    lists:append(
      [[begin
            Id = iolist_to_binary(io_lib:format("~s-~2..0b", [G, I])),
            {ok, Pid} = erlmcp_flow_sim_agent:start_link(Id, [?CAP, atom_to_binary(G)],
                                                         P#{seed => erlang:phash2(Id)}),
            Pid
        end || I <- lists:seq(1, N)] || {G, N, P} <- groups()]).

start_swarms() ->
    [begin
         Members = [element(2, {ok, _} = erlmcp_flow_sim_agent:start_link(
                                           ?SWARM_PROFILE#{seed => S * 100 + M}))
                    || M <- lists:seq(1, ?SWARM_MEMBERS)],
         Id = iolist_to_binary(io_lib:format("swarm-~b", [S])),
         {ok, Pid} = erlmcp_flow_swarm:start_link(Id, [?CAP, <<"swarm">>], Members),
         {Pid, Members}
     end || S <- lists:seq(1, ?SWARMS)].

run_strategy(Strategy, Tasks, Conc, Timeout) ->
    %% Every strategy starts from the same blank table: the learner learns
    %% from every outcome, so q_learning would otherwise profit from the runs
    %% before it.
    ok = erlmcp_flow_q_learning:reset(),
    Parent = self(),
    Per = Tasks div Conc,
    T0 = erlang:monotonic_time(microsecond),
    Callers = [spawn_link(fun() -> Parent ! {done, self(), caller(Strategy, Per, Timeout)} end)
               || _ <- lists:seq(1, Conc)],
    Results = lists:append([receive {done, C, R} -> R end || C <- Callers]),
    Elapsed = erlang:monotonic_time(microsecond) - T0,
    Lat = lists:sort([L || {_, L} <- Results]),
    N = length(Results),
    #{strategy => Strategy, tasks => N,
      ok => length([ok || {ok, _} <- Results]),
      mean_ms => lists:sum(Lat) / max(N, 1) / 1000,
      p50_ms => percentile(Lat, 0.50) / 1000,
      p99_ms => percentile(Lat, 0.99) / 1000,
      throughput => N / (Elapsed / 1.0e6)}.

caller(Strategy, N, Timeout) ->
    Req = #{capabilities => [?CAP], strategy => Strategy, timeout => Timeout},
    [begin
         T0 = erlang:monotonic_time(microsecond),
         Answer = erlmcp_flow:execute(#{id => I}, Req),
         Lat = erlang:monotonic_time(microsecond) - T0,
         {element(1, Answer), Lat}
     end || I <- lists:seq(1, N)].

percentile([], _) -> 0.0;
percentile(Sorted, P) ->
    Index = max(1, min(length(Sorted), round(P * length(Sorted)))),
    float(lists:nth(Index, Sorted)).
