%% The Erlang bench driver: figures as seen from Erlang callers.
%%
%%   make bench-erlang
%%
%% prints, at 60 registered agents:
%% - routing decisions per second (decide + complete, the two NIF calls of a
%%   task) with round_robin and q_learning, with 1 and 2 calling processes,
%%   and the latency of one q_learning decision (decide alone) and of its
%%   completion (complete alone, which includes the TD update);
%% - whole tasks per second through erlmcp_flow:execute/2 to echo agents,
%%   with and without the caller's traceparent and tracestate (every task is
%%   traced: its span and its attempt's span go through the correlation
%%   store either way);
%% - /metrics expositions rendered per second, at 60 agents;
%% - registry lookups per second (erlmcp_flow:find_agent/1) beside a plain
%%   ets:lookup/2 on a table of the same size, in the same run;
%% - circuit-breaker checks per second (erlmcp_flow_circuit_breaker:
%%   allow_request/1 on a closed breaker), to set beside fuse's documented
%%   figure of about 2 million asks per second;
%% - the cost of one registration and its removal at 60, 1 000 and 10 000
%%   agents; one process registered under 10 000 ids, and 10 000 agents
%%   killed at once: how long until the registry has them out of routing;
%% - what telemetry events cost: without telemetry loaded, and (where it is
%%   on the code path) loaded without a handler and with one.
%% Each throughput is the median of 3 runs of 1 s.
-module(erlmcp_flow_bench).

-export([main/0, run/0]).
-export([telemetry_handler/4]).

-define(AGENTS, 60).
-define(RUN_MS, 1000).
-define(REPEATS, 3).
-define(CAP, <<"bench">>).

main() ->
    Status = try run(), 0
             catch C:R:S -> io:format(standard_error, "bench failed: ~p:~p~n~p~n", [C, R, S]), 1
             end,
    erlang:halt(Status).

run() ->
    logger:set_primary_config(level, warning),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    %% The decision loops below settle every lease with ok: no breaker opens.
    Agents = [begin
                  Pid = spawn_link(fun echo/0),
                  Id = iolist_to_binary(io_lib:format("bench-~2..0b", [I])),
                  ok = erlmcp_flow:register_agent(Id, Pid, [?CAP, <<"other">>]),
                  Id
              end || I <- lists:seq(1, ?AGENTS)],
    Router = erlmcp_flow_registry:router(),
    Caps = [?CAP],
    io:format("erlmcp_flow Erlang bench: OTP ~s, ~b schedulers, ~b agents "
              "(make bench-erlang)~n~n", [erlang:system_info(otp_release),
                                          erlang:system_info(schedulers_online), ?AGENTS]),
    Decide = fun(Strategy) ->
                     fun() ->
                             {ok, _, _, Lease, _, _} =
                                 erlmcp_flow_nif:decide(Router, Caps, Strategy, undefined,
                                                        undefined, [], any, undefined),
                             {ok, _} = erlmcp_flow_nif:complete(Lease, ok)
                     end
             end,
    Execute = fun() -> {ok, _, _} = erlmcp_flow:execute(#{}, #{capabilities => Caps}) end,
    Header = <<"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01">>,
    Traced = fun() ->
                     {ok, _, _} = erlmcp_flow:execute(#{type => bench, id => 1},
                                                      #{capabilities => Caps,
                                                        traceparent => Header,
                                                        tracestate => <<"rojo=00f067aa0ba902b7">>})
             end,
    Scrape = fun() -> _ = iolist_size(erlmcp_flow_prometheus:render()) end,
    Tab = ets:new(bench_plain, [set, public, {read_concurrency, true}]),
    ets:insert(Tab, [{Id, self()} || Id <- Agents]),
    Ids = list_to_tuple(Agents),
    Find = fun(I) -> {ok, _} = erlmcp_flow:find_agent(element(I rem ?AGENTS + 1, Ids)) end,
    Plain = fun(I) -> [_] = ets:lookup(Tab, element(I rem ?AGENTS + 1, Ids)) end,
    Breaker = fun(I) ->
                      allow = erlmcp_flow_circuit_breaker:allow_request(element(I rem ?AGENTS + 1, Ids))
              end,
    Rows = [{"round_robin decision (decide + complete)", 1, throughput(1, Decide(round_robin))},
            {"round_robin decision (decide + complete)", 2, throughput(2, Decide(round_robin))},
            {"q_learning decision (decide + complete)", 1, throughput(1, Decide(q_learning))},
            {"q_learning decision (decide + complete)", 2, throughput(2, Decide(q_learning))},
            {"execute/2 round trip to an echo agent", 1, throughput(1, Execute)},
            {"execute/2 round trip to an echo agent", 2, throughput(2, Execute)},
            {"execute/2 with traceparent and tracestate", 1, throughput(1, Traced)},
            {"/metrics exposition, 60 agents", 1, throughput(1, Scrape, 10)},
            {"registry lookup erlmcp_flow:find_agent/1", 1, indexed_throughput(1, Find)},
            {"registry lookup erlmcp_flow:find_agent/1", 2, indexed_throughput(2, Find)},
            {"plain ets:lookup/2, same size", 1, indexed_throughput(1, Plain)},
            {"plain ets:lookup/2, same size", 2, indexed_throughput(2, Plain)},
            {"breaker check allow_request/1 (closed)", 1, indexed_throughput(1, Breaker)},
            {"breaker check allow_request/1 (closed)", 2, indexed_throughput(2, Breaker)}],
    io:format("~-44s ~9s ~14s~n", ["operation", "processes", "ops/s"]),
    [io:format("~-44s ~9b ~14s~n", [Name, P, thousands(round(Ops))]) || {Name, P, Ops} <- Rows],
    {D, C} = decision_latency(Router, Caps, 200000),
    io:format("~nq_learning at ~b agents, 200 000 samples, 1 process (us):~n", [?AGENTS]),
    [io:format("  ~-28s p50 ~6.2f   p99 ~6.2f   p99.9 ~6.2f~n", [Name, P50, P99, P999])
     || {Name, {P50, P99, P999}} <- [{"decide (the decision)", D},
                                      {"complete (with TD update)", C}]],
    Ratio = element(3, lists:nth(9, Rows)) / element(3, lists:nth(11, Rows)),
    FuseAsks = 2.0e6,
    io:format("~nbreaker checks: ~.1f million/s with 1 process, ~.1f with 2 "
              "(fuse documents about 2 million asks/s)~n",
              [element(3, lists:nth(13, Rows)) / 1.0e6, element(3, lists:nth(14, Rows)) / 1.0e6]),
    _ = FuseAsks,
    io:format("~nfind_agent/1 runs at ~.2f of a plain ets:lookup/2 (1 process)~n", [Ratio]),
    telemetry_cost(Execute),
    io:format("~nregister_agent/3 + unregister_agent/1 of one more agent, mean of 200 (us):~n"),
    _ = lists:foldl(fun(Size, Have) ->
                            grow(Have, Size),
                            io:format("  at ~6b agents ~10.1f~n", [Size, registration(200)]),
                            Size
                    end, ?AGENTS, [?AGENTS, 1000, 10000]),
    #{agents := Others} = erlmcp_flow:stats(),
    io:format("~nbeside ~b other agents:~n", [Others]),
    Many = spawn(fun echo/0),
    {RegUs, ok} = timer:tc(fun() ->
                                   lists:foreach(
                                     fun(I) ->
                                             Id = iolist_to_binary(io_lib:format("many-~b", [I])),
                                             ok = erlmcp_flow:register_agent(Id, Many, [<<"many">>])
                                     end, lists:seq(1, 10000))
                           end),
    io:format("  one process under 10 000 ids: registered in ~.2f s, "
              "out of routing ~.1f ms after its death~n",
              [RegUs / 1.0e6, kill_all([Many]) / 1000]),
    [] = erlmcp_flow:query_agents([<<"many">>]),
    Dying = [spawn(fun echo/0) || _ <- lists:seq(1, 10000)],
    lists:foreach(fun({I, Pid}) ->
                          Id = iolist_to_binary(io_lib:format("dying-~b", [I])),
                          ok = erlmcp_flow:register_agent(Id, Pid, [<<"dying">>])
                  end, lists:zip(lists:seq(1, 10000), Dying)),
    io:format("  10 000 agents killed at once: out of routing ~.1f ms after their deaths~n",
              [kill_all(Dying) / 1000]),
    [] = erlmcp_flow:query_agents([<<"dying">>]),
    ok.

%% What emitting telemetry events costs: one emission, and execute/2 (four
%% events a task) without telemetry loaded, with it loaded and no handler
%% attached, and with a handler that does nothing; the last two only where
%% telemetry is on the code path (it is not shipped).
telemetry_cost(Execute) ->
    Emit = fun() -> erlmcp_flow_telemetry:execute([task, start], #{}, #{}) end,
    Base = throughput(1, Execute),
    io:format("~ntelemetry at ~b agents (1 process):~n", [?AGENTS]),
    io:format("  one emission, telemetry not loaded          ~8.1f ns~n",
              [1.0e9 / throughput(1, Emit)]),
    io:format("  execute/2, telemetry not loaded             ~8s tasks/s~n",
              [thousands(round(Base))]),
    case code:which(telemetry) of
        non_existing ->
            io:format("  (telemetry is not on the code path: ERL_LIBS=<dir> to measure with it)~n");
        _ ->
            {ok, _} = application:ensure_all_started(telemetry),
            T = telemetry,
            io:format("  one emission, loaded, no handler            ~8.1f ns~n",
                      [1.0e9 / throughput(1, Emit)]),
            ok = T:attach_many(bench, erlmcp_flow_telemetry:events(),
                               fun ?MODULE:telemetry_handler/4, []),
            io:format("  one emission to a handler that does nothing ~8.1f ns~n",
                      [1.0e9 / throughput(1, Emit)]),
            ok = T:detach(bench),
            Loaded = throughput(1, Execute),
            io:format("  execute/2, loaded, no handler               ~8s tasks/s (~.2f of not loaded)~n",
                      [thousands(round(Loaded)), Loaded / Base]),
            ok = T:attach_many(bench, erlmcp_flow_telemetry:events(),
                               fun ?MODULE:telemetry_handler/4, []),
            Handled = throughput(1, Execute),
            io:format("  execute/2, a handler that does nothing      ~8s tasks/s (~.2f of not loaded)~n",
                      [thousands(round(Handled)), Handled / Base]),
            ok = T:detach(bench)
    end.

%% @private A telemetry handler that does nothing.
telemetry_handler(_Event, _Measurements, _Metadata, _Config) ->
    ok.

%% Kills `Pids', waits for their deaths, then for the registry to have handled
%% every message sent before ours (their 'DOWN's): microseconds from the kill.
kill_all(Pids) ->
    Refs = [erlang:monitor(process, P) || P <- Pids],
    T0 = erlang:monotonic_time(microsecond),
    [exit(P, kill) || P <- Pids],
    [receive {'DOWN', R, process, _, _} -> ok end || R <- Refs],
    _ = sys:get_state(erlmcp_flow_registry),
    erlang:monotonic_time(microsecond) - T0.

%% Registers agents (each its own process) until the registry holds `Size'.
grow(Have, Size) ->
    [ok = erlmcp_flow:register_agent(iolist_to_binary(io_lib:format("grow-~b", [I])),
                                     spawn_link(fun echo/0), [?CAP])
     || I <- lists:seq(Have + 1, Size)],
    ok.

%% The mean time of one registration and its removal at the registry's
%% current size: each one changes the core's table (a new snapshot).
registration(N) ->
    Pid = spawn_link(fun echo/0),
    Ids = [iolist_to_binary(io_lib:format("extra-~b", [I])) || I <- lists:seq(1, N)],
    {T, ok} = timer:tc(fun() ->
                               lists:foreach(fun(Id) ->
                                                     ok = erlmcp_flow:register_agent(Id, Pid, [?CAP]),
                                                     ok = erlmcp_flow:unregister_agent(Id)
                                             end, Ids)
                       end),
    T / N.

echo() ->
    receive
        {execute_task, _Task, _Ctx, From, Ref} -> From ! {task_result, Ref, {ok, done}}, echo()
    end.

throughput(Procs, Fun) ->
    throughput(Procs, Fun, 1000).

%% Slow operations check the clock every `Batch' calls rather than 1000.
throughput(Procs, Fun, Batch) ->
    indexed_throughput(Procs, fun(_) -> Fun() end, Batch).

indexed_throughput(Procs, Fun) ->
    indexed_throughput(Procs, Fun, 1000).

%% Median over ?REPEATS runs of the total operations per second of `Procs'
%% processes calling `Fun(I)' in a loop, `Batch' calls between looks at the
%% clock, for ?RUN_MS (the last batch may end a little later: the rate is
%% taken over the time the processes really ran).
indexed_throughput(Procs, Fun, Batch) ->
    Runs = lists:sort([one_run(Procs, Fun, Batch) || _ <- lists:seq(1, ?REPEATS)]),
    lists:nth((?REPEATS + 1) div 2, Runs).

one_run(Procs, Fun, Batch) ->
    Self = self(),
    T0 = erlang:monotonic_time(microsecond),
    Deadline = T0 div 1000 + ?RUN_MS,
    Pids = [spawn_link(fun() -> Self ! {count, self(), loop(Fun, Deadline, Batch, 0)} end)
            || _ <- lists:seq(1, Procs)],
    Total = lists:sum([receive {count, P, N} -> N end || P <- Pids]),
    Total * 1.0e6 / (erlang:monotonic_time(microsecond) - T0).

loop(Fun, Deadline, Batch, N) ->
    batch(Fun, N, Batch),
    case erlang:monotonic_time(millisecond) >= Deadline of
        true -> N + Batch;
        false -> loop(Fun, Deadline, Batch, N + Batch)
    end.

batch(_Fun, _I, 0) -> ok;
batch(Fun, I, K) -> Fun(I), batch(Fun, I + 1, K - 1).

%% Sampled in a process whose heap is sized up front for every sample and the
%% garbage of every call, so that no garbage collection (which would copy the
%% growing list of samples) lands inside a timed call.
decision_latency(Router, Caps, N) ->
    Self = self(),
    {Pid, MRef} = spawn_opt(fun() -> Self ! {latency, self(), sample_latency(Router, Caps, N)} end,
                            [monitor, {min_heap_size, 64 * N}]),
    receive
        {latency, Pid, Result} -> erlang:demonitor(MRef, [flush]), Result;
        {'DOWN', MRef, process, Pid, Why} -> error({latency_sampler, Why})
    end.

sample_latency(Router, Caps, N) ->
    Pairs = [begin
                 T0 = erlang:monotonic_time(nanosecond),
                 {ok, _, _, Lease, _, _} = erlmcp_flow_nif:decide(Router, Caps, q_learning,
                                                                  undefined, undefined, [],
                                                                  any, undefined),
                 T1 = erlang:monotonic_time(nanosecond),
                 {ok, _} = erlmcp_flow_nif:complete(Lease, ok),
                 {T1 - T0, erlang:monotonic_time(nanosecond) - T1}
             end || _ <- lists:seq(1, N)],
    {percentiles([D || {D, _} <- Pairs]), percentiles([C || {_, C} <- Pairs])}.

percentiles(Samples) ->
    T = list_to_tuple(lists:sort(Samples)),
    N = tuple_size(T),
    At = fun(P) -> element(max(1, round(P * N)), T) / 1000 end,
    {At(0.50), At(0.99), At(0.999)}.

thousands(N) ->
    S = integer_to_list(N),
    lists:reverse(string:join(split3(lists:reverse(S)), " ")).

split3(S) when length(S) =< 3 -> [S];
split3(S) -> {A, B} = lists:split(3, S), [A | split3(B)].
