-module(erlmcp_flow_demo_tests).

-include_lib("eunit/include/eunit.hrl").

%% As `make demo' runs it: the application not started yet (the demo sets
%% its time scale, starts it, and puts the settings back).
demo_test_() ->
    {setup,
     fun() ->
             logger:set_primary_config(level, critical),
             _ = application:stop(erlmcp_flow),
             ok
     end,
     fun(_) -> ok = application:stop(erlmcp_flow) end,
     {timeout, 60, fun small_run/0}}.

small_run() ->
    Parent = self(),
    %% run/1 links its agents to the calling process; a helper keeps them off the test process
    {Pid, MRef} = spawn_monitor(fun() ->
                                        Rows = run_quietly(#{tasks => 200, concurrency => 10,
                                                             timeout => 1000}),
                                        Parent ! {rows, self(), Rows}
                                end),
    #{rows := Rows, trace := Trace} =
        receive {rows, Pid, R} -> R; {'DOWN', MRef, process, Pid, Why} -> error(Why) end,
    ?assertEqual(erlmcp_flow_requirements:strategies(), [S || #{strategy := S} <- Rows]),
    [begin
         ?assertEqual(200, N),
         ?assert(Ok =< N andalso Ok > N div 2),
         ?assert(P50 =< P99),
         ?assert(Mean > 0 andalso Tput > 0),
         %% the tasks started while the fast agents were slowed, and after
         ?assert(Slowed > 0 andalso Recovered > 0)
     end || #{tasks := N, ok := Ok, p50_ms := P50, p99_ms := P99, mean_ms := Mean,
              throughput := Tput, slowed_ms := Slowed, recovered_ms := Recovered} <- Rows],
    %% the demo's time scale is put back
    ?assertEqual(undefined, application:get_env(erlmcp_flow, q_learning)),
    Table = iolist_to_binary(erlmcp_flow_demo:format_table(Rows)),
    %% the traced task's chain: the task's span under the caller's, then one
    %% span per attempt, children of the task's
    {Header, #{attempts := N, trace_id := TraceId, span_id := TaskSpan}, Chain} = Trace,
    {ok, #{span_id := CallerSpan}} = erlmcp_flow_correlation_tracker:parse_traceparent(Header),
    [#{attempt := 0, span_id := TaskSpan, parent_span_id := CallerSpan, outcome := ok}
     | Attempts] = Chain,
    ?assertEqual(lists:seq(1, N), [A || #{attempt := A} <- Attempts]),
    [?assertMatch(#{trace_id := TraceId, parent_span_id := TaskSpan}, S) || S <- Attempts],
    ?assertMatch({match, _}, re:run(Table, "round_robin\\s+200\\s")),
    ?assertMatch({match, _}, re:run(Table, "slowed ms\\s+recovered")),
    %% the demo stops what it started
    erlmcp_flow_test_util:sync_registry(),
    erlmcp_flow_test_util:assert_clean().

run_quietly(Opts) ->
    {ok, Dev} = file:open("/dev/null", [write]),
    group_leader(Dev, self()),
    erlmcp_flow_demo:run(Opts).
