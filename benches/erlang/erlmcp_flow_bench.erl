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
%% - execute/2 beside a bare alias-monitored send/receive to the same
%%   agents (round robin by a counter), 2 callers, three alternated runs;
%% - where a task's time goes (profile): each part of execute/2 alone in a
%%   loop, one caller (the bare round trip, the two NIF calls, the
%%   requirements' planning, telemetry), and the rest;
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
%%   on the code path) loaded without a handler and with one;
%% - every strategy at 60, 1 000 and 10 000 agents: decisions per second
%%   (decide + complete) with 1 and 2 callers, the latency of one decision
%%   (p50, p99, p99.9), and execute/2 round trips per second with 1 and 2
%%   callers; beside them, in the same run over the same agents, a router
%%   written in plain Erlang in the design's style (erlmcp_flow_bench_plain)
%%   and the ratio;
%% - 10 000 agents registered from 10 processes, and killed at once;
%% - the node's memory: OS resident set above a bare start, with 1 000 and
%%   10 000 agents (erlmcp_flow_agent processes) after 120 000 tasks (the
%%   correlation store full at its default cap), each in a fresh VM, beside
%%   the same agents after the same traffic through a bare send/receive.
%% Each throughput at 60 agents is the median of 3 runs of 1 s; the matrix
%% runs are one of 0.5 s each. The results also go to a JSON file
%% (BENCH_JSON, default _build/bench/erlang.json); benches/compare.py sets
%% two such files side by side.
-module(erlmcp_flow_bench).

-export([main/0, run/0]).
-export([telemetry_handler/4]).
-export([memory_main/1, memory_main/2]).
%% for erlmcp_flow_bench_load
-export([json/1, rss/0, bare_call/4, poll/2, verdict/1]).

-define(AGENTS, 60).
-define(RUN_MS, 1000).
-define(REPEATS, 3).
-define(CAP, <<"bench">>).
-define(MATRIX_RUN_MS, 500).
-define(STRATEGIES, [round_robin, least_connections, weighted, consistent_hash, p2c_ewma,
                     q_learning]).

main() ->
    Status = try
                 Results = run(),
                 Path = os:getenv("BENCH_JSON", "_build/bench/erlang.json"),
                 ok = filelib:ensure_dir(Path),
                 ok = file:write_file(Path, [json(Results), $\n]),
                 io:format("~nresults written to ~s~n", [Path]),
                 0
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
    io:format("erlmcp_flow Erlang bench: OTP ~s, ~b schedulers, ~b agents "
              "(make bench-erlang)~n~n", [erlang:system_info(otp_release),
                                          erlang:system_info(schedulers_online), ?AGENTS]),
    %% BENCH_ONLY=matrix,memory runs only those parts
    Only = case os:getenv("BENCH_ONLY") of
               false -> [basics, profile, worst, matrix, membership, memory, rpc, cluster, mcp];
               List -> [list_to_atom(P) || P <- string:lexemes(List, ",")]
           end,
    Parts = [{basics, fun() -> basics(Router, Agents) end},
             {profile, fun() -> profile(Router, Agents) end},
             {worst, fun normal_scheduler_worst/0},
             {matrix, fun() -> matrix(Router) end},
             {membership, fun membership_at_scale/0},
             {memory, fun memory_figures/0},
             {rpc, fun rpc_figures/0},
             {cluster, fun erlmcp_flow_bench_cluster:figures/0},
             {mcp, fun erlmcp_flow_bench_mcp:figures/0}],
    maps:from_list([{otp, list_to_binary(erlang:system_info(otp_release))},
                    {schedulers, erlang:system_info(schedulers_online)}
                    | [{Name, F()} || {Name, F} <- Parts, lists:member(Name, Only)]]).

%% The figures at 60 agents.
basics(Router, Agents) ->
    Caps = [?CAP],
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
    VsBare = execute_vs_bare(Agents, Execute),
    maps:from_list([{<<"execute_vs_bare">>, VsBare} |
                    [{list_to_binary(io_lib:format("~s/~b", [Name, P])), round(Ops)}
                     || {Name, P, Ops} <- Rows]]).

%% The VM's own reference: what a process pays to send a task to one of the
%% same agents and wait for the answer, bare (an alias monitor, round robin
%% by a counter), beside execute/2, 2 callers each, alternated three times
%% in this run (the machine's neighbours move both).
execute_vs_bare(Agents, Execute) ->
    Pids = list_to_tuple([P || Id <- Agents, {ok, P} <- [erlmcp_flow:find_agent(Id)]]),
    N = tuple_size(Pids),
    C = counters:new(1, [write_concurrency]),
    Bare = fun() -> {ok, _} = bare_call(Pids, C, #{}, infinity) end,
    Runs = [{throughput(2, Bare), throughput(2, Execute)} || _ <- lists:seq(1, 3)],
    io:format("~nexecute/2 beside a bare alias-monitored send/receive to the same ~b agents "
              "(2 callers, 3 alternated runs):~n", [N]),
    [io:format("  bare ~12s/s   execute/2 ~12s/s   ratio ~.2f (floor 0.8: ~s)~n",
               [thousands(round(B)), thousands(round(E)), E / B, verdict(E / B >= 0.8)])
     || {B, E} <- Runs],
    [#{bare => round(B), execute => round(E), ratio => E / B, floor_met => E / B >= 0.8}
     || {B, E} <- Runs].

%% @private How a figure stands against its floor, as the benches print it.
verdict(true) -> "met";
verdict(false) -> "NOT met".

%% Where a task's time goes, one caller, each part alone in a loop over the
%% same 60 agents (ns a call): the bare round trip, the NIF calls of a task
%% (its span, its decision and their settling, in the two calls execute/2
%% makes), the requirements' planning, telemetry's checks (two a task,
%% nothing built while it is not loaded), and what execute/2 costs whole; the rest is the Erlang around them
%% (maps, the monitor and the answer's bookkeeping) and what running more
%% code between messages costs the schedulers.
profile(Router, Agents) ->
    Pids = list_to_tuple([P || Id <- Agents, {ok, P} <- [erlmcp_flow:find_agent(Id)]]),
    N = tuple_size(Pids),
    C = counters:new(1, []),
    Req = #{capabilities => [?CAP]},
    Ns = fun(F) -> 1.0e9 / throughput(1, F) end,
    Bare = Ns(fun() -> {ok, _} = bare_call(Pids, C, #{}, infinity) end),
    Nif = Ns(fun() ->
                     {ok, _, _, _, S, {ok, _, _, L, _, _}} =
                         erlmcp_flow_nif:task_start(Router, undefined, <<>>, [?CAP], round_robin,
                                                    undefined, undefined, [], any),
                     {ok, _} = erlmcp_flow_nif:task_complete(L, S)
             end),
    Decision = Ns(fun() ->
                          {ok, _, _, L, _, _} =
                              erlmcp_flow_nif:decide(Router, [?CAP], round_robin, undefined,
                                                     undefined, [], any, undefined),
                          {ok, _} = erlmcp_flow_nif:complete(L, ok)
                  end),
    Plan = Ns(fun() -> {ok, _} = erlmcp_flow_requirements:plan(#{}, Req, execute, #{}) end),
    %% telemetry not loaded: a task asks twice whether it is, and builds
    %% nothing for it
    Emit = Ns(fun erlmcp_flow_telemetry:enabled/0),
    Execute = Ns(fun() -> {ok, _, _} = erlmcp_flow:execute(#{}, Req#{strategy => round_robin}) end),
    Rest = Execute - Bare - Nif - Plan - 2 * Emit,
    io:format("~nwhere a task's time goes (1 caller, round_robin, ~b agents; ns a task):~n", [N]),
    Rows = [{"bare alias-monitored send/receive", Bare},
            {"NIF: span, decision, settling (task_start + task_complete)", Nif},
            {"  of which the decision and its settling alone", Decision},
            {"  of which the task's and the attempt's spans", Nif - Decision},
            {"requirements' planning", Plan},
            {"telemetry not loaded: 2 checks, no event built", 2 * Emit},
            {"the rest: Erlang around them, scheduling", Rest},
            {"execute/2 whole", Execute}],
    [io:format("  ~-58s ~8b~n", [Name, round(V)]) || {Name, V} <- Rows],
    #{bare_ns => Bare, nif_ns => Nif, decision_ns => Decision, spans_ns => Nif - Decision,
      plan_ns => Plan, telemetry_ns => 2 * Emit, rest_ns => Rest, execute_ns => Execute}.

%% The longest call each normal-scheduler NIF of the codec and the votes
%% can make: its largest accepted input (16 KiB of message, 16 384 units of
%% encoding work, 64 KiB of answer), the worst shape for it (many small
%% elements),
%% median and max of 200 calls in µs. One past those inputs it answers
%% `{error, {dirty_only, Bound}}' (erlmcp_flow_jsonrpc_tests).
normal_scheduler_worst() ->
    Bound = 16384,
    DecodeBound = Bound,
    Ints = <<"[", (binary:copy(<<"1,">>, (DecodeBound - 64) div 2))/binary, "1]">>,
    Head = <<"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":">>,
    Message = fun(Params) ->
                      Pad = binary:copy(<<" ">>, DecodeBound - byte_size(Head) - byte_size(Params) - 1),
                      <<Head/binary, Params/binary, Pad/binary, "}">>
              end,
    Many = Message(Ints),
    Text = Message(<<"[\"", (binary:copy(<<"x">>, DecodeBound - 128))/binary, "\"]">>),
    DecodeBound = byte_size(Many),
    DecodeBound = byte_size(Text),
    Limits = [1 bsl 20, 64, 100],
    Decode = fun(Bin) -> fun() -> {single, _} = apply(erlmcp_flow_nif, jsonrpc_decode,
                                                      [Bin | Limits]) end end,
    %% a list's units: one for it, two an element (its cell, itself)
    SmallInts = lists:duplicate((Bound - 1) div 2, 1),
    Binary = binary:copy(<<"a">>, Bound - 1),
    {ok, Key} = erlmcp_flow_nif:vote_key(binary:copy(<<"k">>, 32)),
    Vote = {<<"0af7651916cd43dd8448eb211c80319c">>, <<"b7ad6b7169203331">>, <<"agent">>,
            <<"node@host">>, binary:copy(<<1>>, 65536), 1700000000000, 42},
    Sig = erlmcp_flow_nif:vote_sign(Key, Vote),
    Rows = [{"jsonrpc_decode, 16 KiB of one string", Decode(Text)},
            {"jsonrpc_decode, 16 KiB of small integers", Decode(Many)},
            {"json_encode, a binary of 16 KiB", fun() -> {ok, _} = erlmcp_flow_nif:json_encode(Binary) end},
            {"json_encode, 8 191 small integers", fun() -> {ok, _} = erlmcp_flow_nif:json_encode(SmallInts) end},
            {"jsonrpc_encode, a response of 8 185 integers",
             fun() -> {ok, _} = erlmcp_flow_nif:jsonrpc_encode(
                                  {response, 1, {ok, lists:duplicate(8185, 1)}}) end},
            {"vote_sign, an answer of 64 KiB", fun() -> <<_:32/binary>> = erlmcp_flow_nif:vote_sign(Key, Vote) end},
            {"vote_verify, an answer of 64 KiB", fun() -> ok = erlmcp_flow_nif:vote_verify(Key, Vote, Sig) end}],
    io:format("~nthe longest normal-scheduler NIF calls (largest accepted input, 200 calls, us):~n"),
    maps:from_list(
      [begin
           F(),
           Times = lists:sort([begin
                                   T0 = erlang:monotonic_time(nanosecond),
                                   F(),
                                   erlang:monotonic_time(nanosecond) - T0
                               end || _ <- lists:seq(1, 200)]),
           Median = lists:nth(100, Times) / 1000,
           Max = lists:last(Times) / 1000,
           io:format("  ~-48s median ~8.1f   max ~8.1f~n", [Name, Median, Max]),
           {list_to_binary(Name), #{median_us => Median, max_us => Max}}
       end || {Name, F} <- Rows]).

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
    Runs = lists:sort([one_run(Procs, Fun, Batch, ?RUN_MS) || _ <- lists:seq(1, ?REPEATS)]),
    lists:nth((?REPEATS + 1) div 2, Runs).

%% One run of ?MATRIX_RUN_MS: the matrix has many cells.
quick_throughput(Procs, Fun) ->
    one_run(Procs, Fun, 100, ?MATRIX_RUN_MS).

one_run(Procs, Fun, Batch, RunMs) ->
    Self = self(),
    T0 = erlang:monotonic_time(microsecond),
    Deadline = T0 div 1000 + RunMs,
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

%%====================================================================
%% Every strategy at 60, 1 000 and 10 000 agents, and the plain router
%%====================================================================

matrix(Router) ->
    io:format("~nevery strategy, by registered agents (echo agents holding ~s); "
              "one run of ~b ms per cell~n", [?CAP, ?MATRIX_RUN_MS]),
    io:format("~-18s ~6s ~11s ~11s ~8s ~8s ~8s ~11s ~11s~n",
              ["strategy", "agents", "decide/s 1", "decide/s 2", "p50 us", "p99 us",
               "p99.9 us", "execute/s 1", "execute/s 2"]),
    #{agents := Have} = erlmcp_flow:stats(),
    %% the matrix routes by key: its ring is kept through the growth (as on
    %% a node whose tasks are routed by key), and registrations pay for it
    ok = erlmcp_flow_nif:ring_build(Router),
    {_, Cells} =
        lists:foldl(
          fun(Size, {Had, Acc}) ->
                  grow(Had, Size),
                  Reg = registration(200),
                  Row = [strategy_cell(Router, S, Size) || S <- ?STRATEGIES],
                  Plain = plain_cells(Size, Row),
                  io:format("  register + unregister one more agent at ~b: ~.1f us~n", [Size, Reg]),
                  {Size, Acc#{integer_to_binary(Size) =>
                                  #{strategies => maps:from_list(Row),
                                    plain => Plain,
                                    register_unregister_us => Reg}}}
          end, {Have, #{}}, [60, 1000, 10000]),
    ratios(Cells),
    %% the grown agents go: the next parts run beside the first 60
    Grown = [P || {<<"grow-", _/binary>>, P, _, _} <- erlmcp_flow_registry:list_agents()],
    [unlink(P) || P <- Grown],
    _ = kill_all(Grown),
    Cells.

%% The bench agents: every registered agent holds ?CAP (grow/2 adds more).
strategy_cell(Router, Strategy, Size) ->
    Caps = [?CAP],
    Key = fun(I) -> case Strategy of
                        consistent_hash -> integer_to_binary(I);
                        _ -> undefined
                    end
          end,
    Decide = fun(I) ->
                     {ok, _, _, Lease, _, _} =
                         erlmcp_flow_nif:decide(Router, Caps, Strategy, Key(I), undefined,
                                                [], any, undefined),
                     {ok, _} = erlmcp_flow_nif:complete(Lease, ok)
             end,
    Execute = fun(I) ->
                      Req = case Strategy of
                                consistent_hash -> #{sticky_key => integer_to_binary(I)};
                                _ -> #{}
                            end,
                      {ok, _, _} = erlmcp_flow:execute(#{}, Req#{capabilities => Caps,
                                                                 strategy => Strategy})
              end,
    D1 = quick_throughput(1, Decide),
    D2 = quick_throughput(2, Decide),
    {P50, P99, P999} = strategy_latency(Router, Strategy, Key, 20000),
    E1 = quick_throughput(1, Execute),
    E2 = quick_throughput(2, Execute),
    io:format("~-18s ~6b ~11s ~11s ~8.2f ~8.2f ~8.2f ~11s ~11s~n",
              [Strategy, Size, thousands(round(D1)), thousands(round(D2)), P50, P99, P999,
               thousands(round(E1)), thousands(round(E2))]),
    {Strategy, #{decide_per_s_1 => round(D1), decide_per_s_2 => round(D2),
                 decide_p50_us => P50, decide_p99_us => P99, decide_p999_us => P999,
                 execute_per_s_1 => round(E1), execute_per_s_2 => round(E2)}}.

strategy_latency(Router, Strategy, Key, N) ->
    Self = self(),
    {Pid, MRef} = spawn_opt(
                    fun() ->
                            Samples = [begin
                                           K = Key(I),
                                           T0 = erlang:monotonic_time(nanosecond),
                                           {ok, _, _, Lease, _, _} =
                                               erlmcp_flow_nif:decide(Router, [?CAP], Strategy, K,
                                                                      undefined, [], any, undefined),
                                           T1 = erlang:monotonic_time(nanosecond),
                                           {ok, _} = erlmcp_flow_nif:complete(Lease, ok),
                                           T1 - T0
                                       end || I <- lists:seq(1, N)],
                            Self ! {latency, self(), percentiles(Samples)}
                    end, [monitor, {min_heap_size, 32 * N}]),
    receive
        {latency, Pid, Result} -> erlang:demonitor(MRef, [flush]), Result;
        {'DOWN', MRef, process, Pid, Why} -> error({latency_sampler, Why})
    end.

%% The plain-Erlang router over the same agents (their pids), round robin
%% and Q-learning, execute round trips with 1 and 2 callers; printed with
%% the ratio of erlmcp_flow's figure in the same run.
plain_cells(Size, Row) ->
    _ = erlmcp_flow_bench_plain:start(),
    [erlmcp_flow_bench_plain:add_agent(Pid, ?CAP) || Pid <- erlmcp_flow:find_agents_by_capability(?CAP)],
    Cells = [begin
                 Exec = fun(_) -> {ok, _} = erlmcp_flow_bench_plain:execute(S, ?CAP, #{}) end,
                 P1 = quick_throughput(1, Exec),
                 P2 = quick_throughput(2, Exec),
                 #{execute_per_s_2 := Ours} = proplists:get_value(S, Row),
                 io:format("~-18s ~6b ~11s ~11s ~8s ~8s ~8s ~11s ~11s  erlmcp_flow x~.1f~n",
                           ["plain " ++ atom_to_list(S), Size, "", "", "", "", "",
                            thousands(round(P1)), thousands(round(P2)), Ours / P2]),
                 {S, #{execute_per_s_1 => round(P1), execute_per_s_2 => round(P2),
                       erlmcp_flow_ratio_2 => Ours / P2}}
             end || S <- [round_robin, q_learning]],
    erlmcp_flow_bench_plain:stop(),
    maps:from_list(Cells).

%% execute/2 at 10 000 agents against the same strategy at 60.
ratios(Cells) ->
    io:format("~nexecute/2 with 2 callers at 10 000 agents, as a share of the same "
              "strategy at 60:~n"),
    #{<<"60">> := #{strategies := S60}, <<"10000">> := #{strategies := S10k}} = Cells,
    [begin
         R = maps:get(execute_per_s_2, maps:get(S, S10k)) / maps:get(execute_per_s_2, maps:get(S, S60)),
         io:format("  ~-18s ~.2f (floor 0.7: ~s)~n", [S, R, verdict(R >= 0.7)])
     end || S <- ?STRATEGIES],
    ok.

%%====================================================================
%% Membership at scale
%%====================================================================

%% 10 000 agents (each its own process, ids made beforehand) registered
%% from 10 processes; then killed at once: how long until the registry has
%% every one out of routing.
membership_at_scale() ->
    #{agents := Others} = erlmcp_flow:stats(),
    Pids = [spawn(fun echo/0) || _ <- lists:seq(1, 10000)],
    Groups = [[{iolist_to_binary(io_lib:format("scale-~b-~b", [G, I])), P}
               || {I, P} <- lists:zip(lists:seq(1, 1000), lists:sublist(Pids, (G - 1) * 1000 + 1, 1000))]
              || G <- lists:seq(1, 10)],
    Self = self(),
    T0 = erlang:monotonic_time(microsecond),
    Workers = [spawn_link(fun() ->
                                  [ok = erlmcp_flow:register_agent(Id, P, [<<"scale">>]) || {Id, P} <- G],
                                  Self ! {registered, self()}
                          end) || G <- Groups],
    [receive {registered, W} -> ok end || W <- Workers],
    RegS = (erlang:monotonic_time(microsecond) - T0) / 1.0e6,
    10000 = length(erlmcp_flow:query_agents([<<"scale">>])),
    OutMs = kill_all(Pids) / 1000,
    [] = erlmcp_flow:query_agents([<<"scale">>]),
    io:format("~nbeside ~b other agents: 10 000 agents registered from 10 processes in ~.2f s "
              "(floor 1 s); killed at once, out of routing ~.1f ms after their deaths (floor 2 s)~n",
              [Others, RegS, OutMs]),
    %% one process under 10 000 ids (the registry once stalled on it)
    Many = spawn(fun echo/0),
    Ids = [iolist_to_binary(io_lib:format("many-~b", [I])) || I <- lists:seq(1, 10000)],
    {ManyUs, ok} = timer:tc(fun() ->
                                    lists:foreach(fun(Id) ->
                                                          ok = erlmcp_flow:register_agent(Id, Many, [<<"many">>])
                                                  end, Ids)
                            end),
    ManyOutMs = kill_all([Many]) / 1000,
    [] = erlmcp_flow:query_agents([<<"many">>]),
    io:format("one process under 10 000 ids, one registration at a time: registered in ~.2f s, "
              "out of routing ~.1f ms after its death~n", [ManyUs / 1.0e6, ManyOutMs]),
    #{others => Others, register_10000_from_10_s => RegS, kill_10000_out_ms => OutMs,
      one_pid_10000_ids_register_s => ManyUs / 1.0e6, one_pid_10000_ids_out_ms => ManyOutMs}.

%%====================================================================
%% Memory, each size in a fresh VM
%%====================================================================

memory_figures() ->
    io:format("~nthe node's resident memory above a bare start, erlmcp_flow_agent processes "
              "answering at once, after traffic filling the correlation store "
              "(each size in a fresh VM):~n"),
    Paths = lists:append([["-pa", D] || D <- code:get_path(), D =/= "."]),
    Erl = os:find_executable("erl"),
    Child = fun(N, Path) ->
                    Port = open_port({spawn_executable, Erl},
                                     [{args, ["-noshell" | Paths] ++
                                           ["-eval", io_lib:format("erlmcp_flow_bench:memory_main(~b, ~s)",
                                                                   [N, Path])]},
                                      exit_status, stderr_to_stdout, {line, 65536}]),
                    memory_child(Port, undefined)
            end,
    Figures = [begin
                   Term = Child(N, execute),
                   %% the same agents and traffic through a bare send/receive:
                   %% what the VM itself keeps after it
                   #{rss_above_bare_mb := Bare, rss_above_bare_early_mb := BareEarly} =
                       BareTerm = Child(N, bare),
                   print_memory(N, Term, BareTerm),
                   Floor = case N of 1000 -> 25; 10000 -> 100 end,
                   {integer_to_binary(N),
                    Term#{bare_traffic_rss_above_bare_mb => Bare,
                          bare_traffic_rss_above_bare_early_mb => BareEarly,
                          floor_mb => Floor,
                          floor_met => maps:get(rss_above_bare_mb, Term) =< Floor}}
               end || N <- [1000, 10000]],
    maps:from_list(Figures).

memory_child(Port, Last) ->
    receive
        {Port, {data, {eol, "MEMORY " ++ Text}}} ->
            {ok, Tokens, _} = erl_scan:string(Text ++ "."),
            {ok, Term} = erl_parse:parse_term(Tokens),
            memory_child(Port, Term);
        {Port, {data, _}} ->
            memory_child(Port, Last);
        {Port, {exit_status, 0}} when Last =/= undefined ->
            Last;
        {Port, {exit_status, S}} ->
            error({memory_child, S})
    after 600000 ->
        error(memory_child_timeout)
    end.

print_memory(N, #{rss_above_bare_mb := Mb, rss_above_bare_early_mb := Early,
                  registered_mb := R, erlang_mb := E,
                  processes_mb := P, core := #{bytes_per_agent := Per, table_bytes := T,
                                               bytes_per_span := PerSpan},
                  correlation_entries := C}, #{rss_above_bare_mb := BareTraffic,
                                               rss_above_bare_early_mb := BareEarly}) ->
    Floor = case N of 1000 -> 25; 10000 -> 100 end,
    io:format("  ~6b agents: +~.1f MB at rest (floor ~b MB: ~s; 0.5 s after the traffic +~.1f MB; "
              "+~.1f MB after registering; the same traffic bare: +~.1f MB at rest, +~.1f MB "
              "0.5 s after); Erlang ~.1f MB (processes ~.1f); core ~b bytes per "
              "agent, table ~.1f MB; ~b spans in the store, ~b bytes a span~n",
              [N, Mb, Floor, verdict(Mb =< Floor), Early, R, BareTraffic, BareEarly, E, P, round(Per), T / 1.0e6, C,
               round(PerSpan)]).

%% In a fresh VM: the resident set of a bare start (the application
%% running, nothing registered), then with `N' agents, then after traffic
%% that fills the correlation store to its default cap; printed as one
%% `MEMORY #{...}' line for the parent.
memory_main(N) ->
    memory_main(N, execute).

%% `Path': the traffic through execute/2, or through a bare alias-monitored
%% send/receive to the same agents (round robin), the VM's own reference.
memory_main(N, Path) ->
    logger:set_primary_config(level, warning),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    Bare = settled_rss(),
    [{ok, _} = erlmcp_flow_agent:start(iolist_to_binary(io_lib:format("mem-~b", [I])), [?CAP],
                                       erlmcp_flow_bench_agent, #{})
     || I <- lists:seq(1, N)],
    Registered = settled_rss(),
    %% two spans a task (the task's and its attempt's): past the store's
    %% default cap of 100 000
    Tasks = 120000,
    Self = self(),
    Traffic = case Path of
                  execute ->
                      fun traffic/1;
                  bare ->
                      Pids = list_to_tuple([P || I <- lists:seq(1, N),
                                                 {ok, P} <- [erlmcp_flow:find_agent(iolist_to_binary(
                                                                io_lib:format("mem-~b", [I])))]]),
                      C = counters:new(1, [write_concurrency]),
                      fun(K) -> bare_traffic(Pids, C, K) end
              end,
    [spawn_link(fun() -> Traffic(Tasks div 2), Self ! done end) || _ <- [1, 2]],
    [receive done -> ok end || _ <- [1, 2]],
    {Early, After} = rss_at_rest(),
    #{correlation_entries := Entries} = erlmcp_flow:stats(),
    Core = erlmcp_flow:memory(),
    io:format(standard_error, "~p traffic, ~b agents done~n", [Path, N]),
    Mb = fun(B) -> B / 1.0e6 end,
    Term = #{agents => N, bare_mb => Mb(Bare), rss_above_bare_mb => Mb(After - Bare),
             rss_above_bare_early_mb => Mb(Early - Bare),
             registered_mb => Mb(Registered - Bare), erlang_mb => Mb(erlang:memory(total)),
             processes_mb => Mb(erlang:memory(processes)), ets_mb => Mb(erlang:memory(ets)),
             correlation_entries => Entries, tasks => Tasks,
             core => maps:with([agents_bytes, table_bytes, bytes_per_agent, correlation_bytes,
                                bytes_per_span], Core)},
    io:format("MEMORY ~w~n", [Term]),
    erlang:halt(0).

%% `N' tasks sent bare, each answer awaited.
bare_traffic(_Pids, _C, 0) ->
    ok;
bare_traffic(Pids, C, K) ->
    {ok, _} = bare_call(Pids, C, #{}, infinity),
    bare_traffic(Pids, C, K - 1).

%% @private The VM's own reference for a task: `Task' sent to the next of
%% `Pids' (round robin by the counter `C') under an alias monitor, and its
%% answer awaited: `{ok, Answer}', `{error, {agent_down, Why}}' or `{error,
%% timeout}'.
bare_call(Pids, C, Task, Timeout) ->
    counters:add(C, 1, 1),
    Pid = element(counters:get(C, 1) rem tuple_size(Pids) + 1, Pids),
    Ref = erlang:monitor(process, Pid, [{alias, demonitor}]),
    Pid ! {execute_task, Task, #{}, Ref, Ref},
    receive
        {task_result, Ref, Answer} -> erlang:demonitor(Ref, [flush]), {ok, Answer};
        {'DOWN', Ref, process, _, Why} -> {error, {agent_down, Why}}
    after Timeout ->
        erlang:demonitor(Ref, [flush]),
        {error, timeout}
    end.

%% `N' tasks, their answers dropped as they come.
traffic(0) ->
    ok;
traffic(N) ->
    {ok, _, _} = erlmcp_flow:execute(#{}, #{capabilities => [?CAP]}),
    traffic(N - 1).

%% The OS resident set in bytes once every process has been collected.
settled_rss() ->
    element(2, rss_at_rest()).

%% The resident set 0.5 s after every process was collected, and once the
%% node is at rest: no reading lower by 1 % for 2 s (idle agents have
%% hibernated and the VM's allocators have given back the carriers that
%% traffic left empty, which they do over seconds), within 30 s.
rss_at_rest() ->
    [erlang:garbage_collect(P) || P <- processes()],
    timer:sleep(500),
    Early = rss(),
    {Early, at_rest(Early, 0, 60)}.

at_rest(Low, 4, _) -> Low;
at_rest(Low, _, 0) -> Low;
at_rest(Low, Steady, Left) ->
    timer:sleep(500),
    case rss() of
        R when R < Low * 0.99 -> at_rest(R, 0, Left - 1);
        R -> at_rest(min(R, Low), Steady + 1, Left - 1)
    end.

%% Polls `Fun' every 50 ms until it is true, for at most `Ms'.
-spec poll(fun(() -> boolean()), non_neg_integer()) -> ok.
poll(Fun, Ms) ->
    case Fun() of
        true -> ok;
        false when Ms =< 0 -> error({not_within_ms, Ms});
        false -> timer:sleep(50), poll(Fun, Ms - 50)
    end.

rss() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    [Kb] = [binary_to_integer(K) || <<"VmRSS:", Rest/binary>> <- binary:split(Status, <<"\n">>, [global]),
                                    [K, <<"kB">>] <- [binary:split(string:trim(Rest), <<" ">>, [global, trim_all])]],
    Kb * 1024.

%%====================================================================
%% JSON
%%====================================================================

%% Maps (atom or binary keys), lists, numbers, binaries and atoms.
json(M) when is_map(M) ->
    [${, lists:join($,, [[json(key(K)), $:, json(V)] || {K, V} <- lists:sort(maps:to_list(M))]), $}];
json(L) when is_list(L) -> [$[, lists:join($,, [json(V) || V <- L]), $]];
json(true) -> "true";
json(false) -> "false";
json(A) when is_atom(A) -> json(atom_to_binary(A));
json(I) when is_integer(I) -> integer_to_list(I);
json(F) when is_float(F) -> float_to_list(F, [short]);
json(B) when is_binary(B) -> [$", escape(B), $"].

key(K) when is_atom(K) -> atom_to_binary(K);
key(K) -> K.

escape(B) ->
    [case C of
         $" -> "\\\"";
         $\\ -> "\\\\";
         C when C < 32 -> io_lib:format("\\u~4.16.0b", [C]);
         C -> C
     end || <<C>> <= B].

%%====================================================================
%% JSON-RPC over TCP and HTTP
%%====================================================================

%% flow.route_task over TCP on loopback: 16 connections, each keeping 32
%% requests in flight (pipelined), to the 60 echo agents; then the same over
%% HTTP with keep-alive, one request at a time per connection.
rpc_figures() ->
    _ = application:stop(erlmcp_flow),
    {ok, _} = application:ensure_all_started(inets),
    ok = application:set_env(erlmcp_flow, transports, #{tcp => #{enabled => true, port => 0},
                                                        http => #{enabled => true, port => 0}}),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    [ok = erlmcp_flow:register_agent(iolist_to_binary(io_lib:format("rpc-~b", [I])),
                                     spawn_link(fun echo/0), [?CAP]) || I <- lists:seq(1, ?AGENTS)],
    {ok, Req} = erlmcp_flow_jsonrpc:encode({request, 1, <<"flow.route_task">>,
                                            #{task => #{n => 1},
                                              requirements => #{capabilities => [?CAP]}}}),
    Tcp = tcp_rate(erlmcp_flow_transport:port(tcp), Req, 16, 32, 2000),
    Http = http_rate(erlmcp_flow_transport:port(http), Req, 16, 2000),
    Python = python_round_trip(2000),
    io:format("~nJSON-RPC flow.route_task on loopback to ~b echo agents (~b bytes a request):~n",
              [?AGENTS, byte_size(Req)]),
    [io:format("  ~-44s ~9s/s   p50 ~8.1f us   p99 ~8.1f us~n",
               [Name, thousands(round(Rate)), P50, P99])
     || {Name, #{rate := Rate, p50_us := P50, p99_us := P99}}
            <- [{"TCP, 16 connections x 32 pipelined", Tcp},
                {"HTTP keep-alive, 16 connections", Http}]],
    case Python of
        #{p50_us := PP50, p99_us := PP99, mean_us := PMean} ->
            io:format("  execute/2 round trip to a Python agent (examples/python/flow_agent.py), "
                      "1 caller: mean ~.1f us, p50 ~.1f us, p99 ~.1f us~n", [PMean, PP50, PP99]);
        _ ->
            io:format("  (python3 not found: no Python agent round trip)~n")
    end,
    #{tcp_16x32 => Tcp, http_16 => Http, python_agent => Python}.

%% `N' tasks one after another from Erlang to one Python agent over TCP.
python_round_trip(N) ->
    case os:find_executable("python3") of
        false ->
            #{};
        Python ->
            Script = filename:join(["examples", "python", "flow_agent.py"]),
            Port = open_port({spawn_executable, Python},
                             [{args, [Script, "--port", integer_to_list(erlmcp_flow_transport:port(tcp)),
                                      "--id", "py-bench", "--capability", "py-bench", "--once"]},
                              binary, stderr_to_stdout]),
            wait_registered(<<"py-bench">>, 100),
            Times = [begin
                         T0 = erlang:monotonic_time(microsecond),
                         {ok, _, _} = erlmcp_flow:execute(#{n => I}, #{capabilities => [<<"py-bench">>]}),
                         erlang:monotonic_time(microsecond) - T0
                     end || I <- lists:seq(1, N)],
            catch port_close(Port),
            T = list_to_tuple(lists:sort(Times)),
            #{mean_us => lists:sum(Times) / N, p50_us => float(element(N div 2, T)),
              p99_us => float(element(N * 99 div 100, T))}
    end.

wait_registered(_Id, 0) ->
    error(python_agent_not_registered);
wait_registered(Id, K) ->
    case erlmcp_flow:find_agent(Id) of
        {ok, _} -> ok;
        _ -> timer:sleep(50), wait_registered(Id, K - 1)
    end.

%% Each connection writes `Window' requests, then as many more as answers
%% came in each read (one write for them all), for `Ms'; the latency of a
%% request is from its write to its answer (answers come back in the order
%% the node finishes them, so this pairs each answer with the oldest request
%% out: the figure is the time a request spends in the pipeline).
tcp_rate(Port, Req, Conns, Window, Ms) ->
    Self = self(),
    Line = <<Req/binary, "\n">>,
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    Pids = [spawn_link(
              fun() ->
                      {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port,
                                                [binary, {packet, raw}, {active, false},
                                                 {recbuf, 1 bsl 20}, {sndbuf, 1 bsl 20}]),
                      Now = erlang:monotonic_time(microsecond),
                      ok = gen_tcp:send(S, binary:copy(Line, Window)),
                      Q = queue:from_list(lists:duplicate(Window, Now)),
                      Self ! {rpc_done, self(), tcp_loop(S, Line, Q, Deadline, 0, [], <<>>)}
              end) || _ <- lists:seq(1, Conns)],
    T0 = erlang:monotonic_time(microsecond),
    Results = [receive {rpc_done, P, R} -> R end || P <- Pids],
    Secs = (erlang:monotonic_time(microsecond) - T0) / 1.0e6,
    rate_figures(lists:sum([N || {N, _} <- Results]) / Secs, lists:append([L || {_, L} <- Results])).

tcp_loop(S, Line, Q, Deadline, N, Lat, Partial) ->
    {ok, Data} = gen_tcp:recv(S, 0, 10000),
    Buf = <<Partial/binary, Data/binary>>,
    Lines = binary:split(Buf, <<"\n">>, [global]),
    Rest = lists:last(Lines),
    K = length(Lines) - 1,
    Now = erlang:monotonic_time(microsecond),
    {Sent, Q1} = lists:foldl(fun(_, {Acc, Qa}) ->
                                     {{value, T}, Qb} = queue:out(Qa),
                                     {[Now - T | Acc], Qb}
                             end, {[], Q}, lists:seq(1, K)),
    Lat1 = case N rem 8 of 0 -> Sent ++ Lat; _ -> Lat end,
    case Now div 1000 >= Deadline of
        true ->
            drain(S, queue:len(Q1), Rest),
            gen_tcp:close(S),
            {N + K, Lat1};
        false ->
            K > 0 andalso gen_tcp:send(S, binary:copy(Line, K)),
            Q2 = lists:foldl(fun(_, Qa) -> queue:in(Now, Qa) end, Q1, lists:seq(1, K)),
            tcp_loop(S, Line, Q2, Deadline, N + K, Lat1, Rest)
    end.

%% The answers still out.
drain(_S, 0, _Partial) ->
    ok;
drain(S, Left, Partial) ->
    {ok, Data} = gen_tcp:recv(S, 0, 10000),
    Buf = <<Partial/binary, Data/binary>>,
    Lines = binary:split(Buf, <<"\n">>, [global]),
    drain(S, Left - (length(Lines) - 1), lists:last(Lines)).

http_rate(Port, Req, Conns, Ms) ->
    Self = self(),
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    Head = iolist_to_binary(io_lib:format("POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                          "content-length: ~b\r\n\r\n", [byte_size(Req)])),
    Pids = [spawn_link(
              fun() ->
                      {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {packet, http_bin},
                                                                       {active, false}]),
                      Self ! {rpc_done, self(), http_loop(S, [Head, Req], Deadline, 0, [])}
              end) || _ <- lists:seq(1, Conns)],
    T0 = erlang:monotonic_time(microsecond),
    Results = [receive {rpc_done, P, R} -> R end || P <- Pids],
    Secs = (erlang:monotonic_time(microsecond) - T0) / 1.0e6,
    rate_figures(lists:sum([N || {N, _} <- Results]) / Secs, lists:append([L || {_, L} <- Results])).

http_loop(S, Request, Deadline, N, Lat) ->
    T = erlang:monotonic_time(microsecond),
    ok = gen_tcp:send(S, Request),
    Length = http_headers(S, 0),
    ok = inet:setopts(S, [{packet, raw}]),
    {ok, _} = gen_tcp:recv(S, Length, 10000),
    ok = inet:setopts(S, [{packet, http_bin}]),
    Now = erlang:monotonic_time(microsecond),
    Lat1 = case N rem 8 of 0 -> [Now - T | Lat]; _ -> Lat end,
    case Now div 1000 >= Deadline of
        true -> gen_tcp:close(S), {N + 1, Lat1};
        false -> http_loop(S, Request, Deadline, N + 1, Lat1)
    end.

http_headers(S, Length) ->
    case gen_tcp:recv(S, 0, 10000) of
        {ok, {http_response, _, 200, _}} -> http_headers(S, Length);
        {ok, {http_header, _, 'Content-Length', _, V}} -> http_headers(S, binary_to_integer(V));
        {ok, {http_header, _, _, _, _}} -> http_headers(S, Length);
        {ok, http_eoh} -> Length
    end.

rate_figures(Rate, Lat) ->
    T = list_to_tuple(lists:sort(Lat)),
    At = fun(P) -> float(element(max(1, round(P * tuple_size(T))), T)) end,
    #{rate => Rate, p50_us => At(0.5), p99_us => At(0.99)}.
