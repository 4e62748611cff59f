%% Trace context and the correlation store: the shared W3C vectors, the
%% context agents receive, the spans of tasks, retries and fallbacks, and the
%% store's bounds (cap and TTL), with real agent processes.
-module(erlmcp_flow_correlation_tracker_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [raw_agent/1, echo_agent/0, wait_until/1, with_env/2]).

-define(T, erlmcp_flow_correlation_tracker).
-define(FAST, #{base_retry_delay => 0, max_retry_delay => 0}).
-define(CALLER, <<"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01">>).

%%--------------------------------------------------------------------
%% Headers: the vectors shared with cargo
%%--------------------------------------------------------------------

traceparent_vectors_test() ->
    Cases = erlmcp_flow_test_json:vectors("traceparent.json"),
    ?assert(length(Cases) >= 20),
    lists:foreach(
      fun(#{<<"header">> := H, <<"valid">> := true} = C) ->
              #{<<"version">> := V, <<"trace_id">> := T, <<"parent_id">> := P,
                <<"flags">> := F, <<"formatted">> := Formatted} = C,
              Parsed = #{version => V, trace_id => T, span_id => P, trace_flags => F},
              ?assertEqual({ok, Parsed}, ?T:parse_traceparent(H)),
              ?assertEqual(Formatted, ?T:format_traceparent(Parsed));
         (#{<<"header">> := H, <<"valid">> := false}) ->
              ?assertEqual({error, invalid_trace_context}, ?T:parse_traceparent(H))
      end, Cases).

tracestate_vectors_test() ->
    Cases = erlmcp_flow_test_json:vectors("tracestate.json"),
    ?assert(length(Cases) >= 10),
    [?assertEqual({H, case Valid of true -> ok; false -> {error, invalid_trace_context} end},
                  {H, ?T:validate_tracestate(H)})
     || #{<<"header">> := H, <<"valid">> := Valid} <- Cases].

%% Every request of the W3C validation harness, read as an HTTP receiver
%% must (incoming/1): the traceparent and tracestate passed on.
harness_requests_test() ->
    Cases = erlmcp_flow_test_json:vectors("traceparent.json", <<"incoming">>)
        ++ erlmcp_flow_test_json:vectors("tracestate.json", <<"incoming">>),
    ?assert(length(Cases) >= 80),
    lists:foreach(
      fun(#{<<"case">> := Case, <<"fields">> := Fields, <<"traceparent">> := TP,
            <<"tracestate">> := TS}) ->
              Got = ?T:incoming([{N, V} || [N, V] <- Fields]),
              Expected = maps:from_list([{traceparent, TP} || TP =/= null]
                                        ++ [{tracestate, TS} || TS =/= null]),
              ?assertEqual({Case, Expected}, {Case, Got})
      end, Cases),
    %% strings as inets hands them over, and garbage
    ?assertEqual(#{traceparent => ?CALLER, tracestate => <<"a=1,b=2">>},
                 ?T:incoming([{"TraceParent", " " ++ binary_to_list(?CALLER)},
                              {"tracestate", "a=1"}, {"tracestate", "b=2 "}])),
    [?assertEqual({error, {badarg, headers}}, ?T:incoming(X))
     || X <- [x, [x], [{1, 2}], [{"a", [300]}], [{<<"a">>, b}]]].

not_a_header_test() ->
    [?assertEqual({error, invalid_trace_context}, ?T:parse_traceparent(X))
     || X <- [undefined, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 42, <<>>]],
    ?assertEqual({error, invalid_trace_context}, ?T:validate_tracestate(["a=b"])),
    [?assertEqual({error, invalid_trace_context}, ?T:format_traceparent(M))
     || M <- [#{}, x, #{trace_id => <<"4bf92f3577b34da6a3ce929d0e0e4736">>,
                       span_id => <<"0000000000000000">>, trace_flags => 1},
              #{trace_id => <<"4BF92F3577B34DA6A3CE929D0E0E4736">>,
                span_id => <<"00f067aa0ba902b7">>, trace_flags => 1},
              #{trace_id => <<"4bf92f3577b34da6a3ce929d0e0e4736">>,
                span_id => <<"00f067aa0ba902b7">>, trace_flags => 256}]].

generated_ids_test() ->
    Ids = [?T:generate_trace_id() || _ <- lists:seq(1, 500)],
    lists:foreach(
      fun(<<_:12/binary, Version, _:3/binary, Variant, _:15/binary>> = Id) ->
              ?assertMatch({match, _}, re:run(Id, "^[0-9a-f]{32}$")),
              ?assertEqual($4, Version),
              ?assert(lists:member(Variant, "89ab"))
      end, Ids),
    ?assertEqual(500, length(lists:usort(Ids))),
    Spans = [?T:generate_span_id() || _ <- lists:seq(1, 500)],
    [?assertMatch({match, _}, re:run(S, "^[0-9a-f]{16}$")) || S <- Spans],
    ?assertNot(lists:member(<<"0000000000000000">>, Spans)).

%%--------------------------------------------------------------------
%% Tasks
%%--------------------------------------------------------------------

tasks_test_() ->
    {foreach,
     fun erlmcp_flow_test_util:start/0,
     fun erlmcp_flow_test_util:stop_drained/1,
     [{"the task joins the caller's trace; the agent gets a child context", fun joins/0},
      {"without a traceparent the task starts a trace", fun new_trace/0},
      {"bad trace headers are refused, naming the header", fun bad_headers/0},
      {"retries and the fallback are child spans of the task's span", fun retries/0},
      {"route_task closes its spans when the answer comes", fun routed/0},
      {"a task that finds no agent closes its span as failed", fun no_agent/0},
      {"no span is left open after tasks of every outcome", fun none_open/0},
      {"many tasks under one traceparent form one chain", fun one_trace/0},
      {"an agent opens a child span per call, under its attempt", fun child_spans/0},
      {"a child span whose holder dies closes as abandoned", fun abandoned_child/0},
      {"trace flags: random set on new traces, passed on, reserved ones zeroed",
       fun flags/0}]}.

add(Id, Pid) ->
    ok = erlmcp_flow:register_agent(Id, Pid, [<<"x">>]).

joins() ->
    add(<<"a">>, echo_agent()),
    TS = <<"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE">>,
    {ok, _, Meta} = erlmcp_flow:execute(#{type => review, id => 7},
                                        #{traceparent => ?CALLER, tracestate => TS}),
    #{trace_id := TraceId, span_id := TaskSpan} = Meta,
    ?assertEqual(<<"4bf92f3577b34da6a3ce929d0e0e4736">>, TraceId),
    Ctx = receive {task_seen, _, _, C} -> C end,
    #{trace_id := TraceId, span_id := AttemptSpan, parent_span_id := TaskSpan,
      trace_flags := 1, tracestate := TS} = Ctx,
    ?assertNotEqual(TaskSpan, AttemptSpan),
    ?assertNotEqual(<<"00f067aa0ba902b7">>, AttemptSpan),
    %% the agent can pass its context on as a header
    Header = ?T:format_traceparent(Ctx),
    ?assertEqual({ok, #{version => 0, trace_id => TraceId, span_id => AttemptSpan,
                        trace_flags => 1}}, ?T:parse_traceparent(Header)),
    {ok, [Task, Attempt]} = ?T:get_trace_chain(TraceId),
    ?assertMatch(#{span_id := TaskSpan, parent_span_id := <<"00f067aa0ba902b7">>,
                   agent_id := <<"a">>, summary := <<"review 7">>, outcome := ok,
                   attempt := 0}, Task),
    ?assertMatch(#{span_id := AttemptSpan, parent_span_id := TaskSpan, agent_id := <<"a">>,
                   summary := <<"review 7">>, outcome := ok, attempt := 1}, Attempt),
    #{start_us := S0, end_us := E0} = Task,
    #{start_us := S1, end_us := E1} = Attempt,
    ?assert(S0 =< S1 andalso S1 =< E1 andalso E1 =< E0),
    ?assertEqual({ok, Attempt}, ?T:lookup(AttemptSpan)),
    %% flags travel as sent
    {ok, _, #{trace_id := T2}} =
        erlmcp_flow:execute(#{}, #{traceparent =>
                                       <<"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00">>}),
    Ctx2 = receive {task_seen, _, _, #{trace_id := T2, trace_flags := 0} = C2} -> C2 end,
    ?assertNot(maps:is_key(tracestate, Ctx2)).

new_trace() ->
    add(<<"a">>, echo_agent()),
    {ok, _, #{trace_id := T1, span_id := S1}} = erlmcp_flow:execute(#{}, #{}),
    {ok, _, #{trace_id := T2}} = erlmcp_flow:execute(#{}, #{}),
    ?assertNotEqual(T1, T2),
    ?assertMatch({match, _}, re:run(T1, "^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$")),
    {ok, [Root, _]} = ?T:get_trace_chain(T1),
    ?assertMatch(#{span_id := S1, parent_span_id := undefined, summary := <<>>}, Root),
    ?assertEqual({ok, []}, ?T:get_trace_chain(?T:generate_trace_id())),
    ?assertEqual({error, not_found}, ?T:lookup(?T:generate_span_id())),
    ?assertEqual({error, {badarg, trace_id}}, ?T:get_trace_chain(<<"nope">>)),
    ?assertEqual({error, {badarg, span_id}}, ?T:lookup(42)).

bad_headers() ->
    add(<<"a">>, echo_agent()),
    Upper = <<"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01">>,
    ?assertEqual({error, {badarg, {traceparent, Upper}}},
                 erlmcp_flow:execute(#{}, #{traceparent => Upper})),
    ?assertEqual({error, {badarg, {traceparent, "00-x"}}},
                 erlmcp_flow:execute(#{}, #{traceparent => "00-x"})),
    ?assertEqual({error, {badarg, {tracestate, <<"@a=1">>}}},
                 erlmcp_flow:execute(#{}, #{traceparent => ?CALLER, tracestate => <<"@a=1">>})),
    ?assertEqual({error, {badarg, {traceparent, Upper}}},
                 erlmcp_flow:route_task(#{}, #{traceparent => Upper})),
    %% nothing was dispatched and no span opened
    receive {task_seen, _, _, _} -> ?assert(false) after 0 -> ok end,
    ?assertMatch(#{correlation_entries := 0}, erlmcp_flow:stats()).

retries() ->
    add(<<"bad1">>, raw_agent(fun(_) -> {error, broken} end)),
    add(<<"bad2">>, raw_agent(fun(_) -> {error, broken} end)),
    add(<<"good">>, echo_agent()),
    Retried = [erlmcp_flow:execute(#{id => I}, #{strategy => round_robin}, ?FAST)
               || I <- lists:seq(1, 6)],
    ?assert(lists:any(fun({ok, _, #{attempts := N}}) -> N >= 2 end, Retried)),
    %% then the fallback: the agents fail, no retry, a swarm answers
    ok = erlmcp_flow:unregister_agent(<<"good">>),
    ok = erlmcp_flow:register_swarm(<<"swarm">>, echo_agent(), [<<"x">>]),
    FellBack = [erlmcp_flow:execute(#{id => I}, #{strategy => round_robin},
                                    ?FAST#{max_retry_attempts => 0})
                || I <- lists:seq(1, 6)],
    ?assert(lists:any(fun({ok, _, #{attempts := 2, agent_id := <<"swarm">>}}) -> true;
                         (_) -> false end, FellBack)),
    Answers = Retried ++ FellBack,
    lists:foreach(
      fun({ok, _, #{trace_id := T, span_id := TaskSpan, attempts := N, tried := Tried,
                    agent_id := Final}}) ->
              {ok, [Task | Attempts]} = ?T:get_trace_chain(T),
              ?assertMatch(#{span_id := TaskSpan, attempt := 0, outcome := ok,
                             agent_id := Final}, Task),
              ?assertEqual(lists:seq(1, N), [A || #{attempt := A} <- Attempts]),
              ?assertEqual([TaskSpan], lists:usort([P || #{parent_span_id := P} <- Attempts])),
              ?assertEqual([Id || #{agent_id := Id} <- Tried] ++ [Final],
                           [Id || #{agent_id := Id} <- Attempts]),
              ?assertEqual(lists:duplicate(N - 1, error) ++ [ok],
                           [O || #{outcome := O} <- Attempts])
      end, Answers),
    #{retries := Retries, fallbacks := Fallbacks} = erlmcp_flow:stats(),
    ?assert(Retries >= 1 andalso Fallbacks >= 1),
    ?assertEqual(lists:sum([N - 1 || {ok, _, #{attempts := N}} <- Answers]), Retries + Fallbacks).

routed() ->
    add(<<"a">>, raw_agent(fun(T) -> receive go -> {ok, T} end end)),
    {ok, <<"a">>, Ctx} = erlmcp_flow:route_task(#{type => <<"job">>},
                                                #{traceparent => ?CALLER, reply_to => self()}),
    #{trace_id := TraceId, span_id := AttemptSpan, parent_span_id := TaskSpan} = Ctx,
    ?assertMatch({ok, #{outcome := open}}, ?T:lookup(AttemptSpan)),
    ?assertMatch({ok, #{outcome := open}}, ?T:lookup(TaskSpan)),
    [{_, Pid, _, _}] = erlmcp_flow_registry:list_agents(),
    Pid ! go,
    receive {erlmcp_flow_result, TraceId, {ok, _, #{span_id := TaskSpan}}} -> ok end,
    %% the spans close before the answer is sent
    ?assertMatch({ok, #{outcome := ok, agent_id := <<"a">>}}, ?T:lookup(TaskSpan)),
    ?assertMatch({ok, #{outcome := ok, summary := <<"job">>, attempt := 1}},
                 ?T:lookup(AttemptSpan)).

no_agent() ->
    ?assertEqual({error, no_agents_available}, erlmcp_flow:execute(#{}, #{traceparent => ?CALLER})),
    {ok, [Task]} = ?T:get_trace_chain(<<"4bf92f3577b34da6a3ce929d0e0e4736">>),
    ?assertMatch(#{outcome := failed, agent_id := undefined, attempt := 0}, Task).

none_open() ->
    add(<<"ok">>, echo_agent()),
    add(<<"err">>, raw_agent(fun(_) -> {error, no} end)),
    add(<<"hang">>, raw_agent(fun(_) -> noreply end)),
    Dies = raw_agent(fun(_) -> exit(crash) end),
    add(<<"dies">>, Dies),
    Answers = [erlmcp_flow:execute(#{}, #{timeout => 10, strategy => round_robin}, ?FAST)
               || _ <- lists:seq(1, 12)],
    [?assertMatch({ok, _, _}, A) || A <- Answers],
    Routed = [erlmcp_flow:route_task(#{}, #{timeout => 10, reply_to => self()})
              || _ <- lists:seq(1, 8)],
    [receive {erlmcp_flow_result, T, _} -> ok end || {ok, _, #{trace_id := T}} <- Routed],
    wait_until(fun() -> maps:get(in_flight, erlmcp_flow:stats()) =:= 0 end),
    Traces = [T || {ok, _, #{trace_id := T}} <- Answers ++ Routed],
    Spans = lists:append([element(2, ?T:get_trace_chain(T)) || T <- Traces]),
    ?assertEqual([], [S || #{outcome := open} = S <- Spans]),
    ?assertMatch(#{correlation_open := 0}, erlmcp_flow:stats()),
    Outcomes = lists:usort([O || #{outcome := O} <- Spans]),
    ?assertEqual([down, error, ok, timeout], Outcomes -- [failed]).

%% A caller that passes the same traceparent to every task (one request fanned
%% out to many agents): every task and attempt lands in one trace, from
%% several processes at once.
one_trace() ->
    add(<<"a">>, echo_agent()),
    add(<<"b">>, echo_agent()),
    Self = self(),
    Callers = [spawn_link(fun() ->
                                  Metas = [M || _ <- lists:seq(1, 500),
                                                {ok, _, M} <- [erlmcp_flow:execute(
                                                                 #{}, #{traceparent => ?CALLER})]],
                                  Self ! {done, self(), Metas}
                          end) || _ <- lists:seq(1, 4)],
    Metas = lists:append([receive {done, P, Ms} -> Ms end || P <- Callers]),
    ?assertEqual(2000, length(Metas)),
    TraceId = <<"4bf92f3577b34da6a3ce929d0e0e4736">>,
    ?assertEqual([TraceId], lists:usort([T || #{trace_id := T} <- Metas])),
    {ok, Chain} = ?T:get_trace_chain(TraceId),
    ?assertEqual(4000, length(Chain)),
    ?assertMatch(#{correlation_open := 0}, erlmcp_flow:stats()),
    %% parent order: each task span (under the caller's span) is followed by
    %% its attempt
    Tasks = [S || #{attempt := 0} = S <- Chain],
    ?assertEqual(2000, length(Tasks)),
    [?assertEqual(<<"00f067aa0ba902b7">>, P) || #{parent_span_id := P} <- Tasks],
    Pairs = lists:zip(lists:sublist(Chain, 1, 3999), tl(Chain)),
    ?assertEqual(2000, length([ok || {#{attempt := 0, span_id := Sp},
                                      #{attempt := 1, parent_span_id := Sp}} <- Pairs])),
    ?assertEqual(lists:sort([Sp || #{span_id := Sp} <- Metas]),
                 lists:sort([Sp || #{span_id := Sp} <- Tasks])).

%%--------------------------------------------------------------------
%% Bounds: cap and TTL
%%--------------------------------------------------------------------

cap_test() ->
    with_env([{correlation, #{max_entries => 200}}],
             fun() ->
                     add(<<"a">>, echo_agent()),
                     {ok, _, #{trace_id := First}} = erlmcp_flow:execute(#{}, #{}),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(2, 2000)],
                     ?assertEqual({ok, []}, ?T:get_trace_chain(First)),
                     #{correlation_entries := N, correlation_evicted := Evicted} =
                         erlmcp_flow:stats(),
                     %% 2 spans per task: 4000 inserted, the oldest finished ones went
                     ?assert(N =< 200 + 16),
                     ?assertEqual(4000, N + Evicted),
                     %% the newest task is whole
                     {ok, _, #{trace_id := T}} = erlmcp_flow:execute(#{}, #{}),
                     ?assertMatch({ok, [_, _]}, ?T:get_trace_chain(T))
             end).

ttl_test() ->
    with_env([{clock, manual}, {correlation, #{ttl_ms => 1000}},
              {metrics, #{interval_ms => 3600000}}],
             fun() ->
                     add(<<"a">>, echo_agent()),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 50)],
                     ?assertMatch(#{correlation_entries := 100}, erlmcp_flow:stats()),
                     ?assertEqual(0, ?T:sweep()),
                     {ok, _} = erlmcp_flow_registry:advance_clock(999000),
                     ?assertEqual(0, ?T:sweep()),
                     {ok, _} = erlmcp_flow_registry:advance_clock(2000),
                     %% the metrics sampler sweeps too
                     ?assertEqual(100, erlmcp_flow_metrics:tick()),
                     ?assertMatch(#{correlation_entries := 0, correlation_expired := 100},
                                  erlmcp_flow:stats())
             end).

child_spans() ->
    {ok, Agent} = erlmcp_flow_agent:start(<<"t">>, [<<"x">>], erlmcp_flow_test_agent,
                                          #{owner => self()}),
    {ok, Headers, #{trace_id := T, span_id := TaskSpan}} =
        erlmcp_flow:execute(#{op => calls, names => [<<"GET a">>, <<"GET b">>, <<"GET c">>]},
                            #{traceparent => ?CALLER}),
    Parsed = [element(2, {ok, _} = ?T:parse_traceparent(H)) || H <- Headers],
    %% one span per call: the same trace, three different parent ids
    ?assertEqual([T], lists:usort([Tr || #{trace_id := Tr} <- Parsed])),
    ChildIds = [S || #{span_id := S} <- Parsed],
    ?assertEqual(3, length(lists:usort(ChildIds))),
    {ok, Chain} = ?T:get_trace_chain(T),
    [Attempt] = [S || #{kind := attempt} = S <- Chain],
    #{span_id := AttemptId, parent_span_id := TaskSpan} = Attempt,
    Children = [S || #{kind := child} = S <- Chain],
    ?assertEqual(lists:sort(ChildIds), lists:sort([Id || #{span_id := Id} <- Children])),
    [?assertMatch(#{parent_span_id := AttemptId, outcome := ok, trace_id := T}, C)
     || C <- Children],
    ?assertEqual([<<"GET a">>, <<"GET b">>, <<"GET c">>],
                 lists:sort([N || #{summary := N} <- Children])),
    %% in parent order: the task, its attempt, then the attempt's children
    ?assertEqual([task, attempt, child, child, child], [K || #{kind := K} <- Chain]),
    %% a child of a child
    Ctx = #{trace_id => T, span_id => AttemptId, trace_flags => 1, tracestate => <<"a=1">>},
    C1 = ?T:start_span(Ctx, <<"outer">>),
    ?assertMatch(#{parent_span_id := AttemptId, tracestate := <<"a=1">>}, C1),
    C2 = ?T:start_span(C1, <<"inner">>),
    ?assertEqual(maps:get(span_id, C1), maps:get(parent_span_id, C2)),
    ok = ?T:end_span(C2, error),
    ok = ?T:end_span(C1, ok),
    {ok, Chain2} = ?T:get_trace_chain(T),
    ?assertMatch([#{summary := <<"inner">>, outcome := error}],
                 [S || #{parent_span_id := P} = S <- Chain2, P =:= maps:get(span_id, C1)]),
    %% bad arguments
    ?assertEqual({error, {badarg, name}}, ?T:start_span(Ctx, "name")),
    ?assertEqual({error, {badarg, trace_context}}, ?T:start_span(#{}, <<"n">>)),
    ?assertEqual({error, {badarg, trace_context}},
                 ?T:start_span(Ctx#{span_id := <<"0000000000000000">>}, <<"n">>)),
    ?assertEqual({error, {badarg, outcome}}, ?T:end_span(C1, maybe_ok)),
    ?assertEqual({error, {badarg, span}}, ?T:end_span(Ctx, ok)),
    ?assertEqual({error, {badarg, span}}, ?T:end_span(Ctx#{span => not_a_span}, ok)),
    ok = erlmcp_flow_agent:stop(Agent).

abandoned_child() ->
    {ok, Agent} = erlmcp_flow_agent:start(<<"t">>, [<<"x">>], erlmcp_flow_test_agent,
                                          #{owner => self()}),
    {ok, #{span_id := ChildId, trace_id := T}, _} = erlmcp_flow:execute(#{op => open_span}, #{}),
    {ok, #{outcome := open, kind := child}} = ?T:lookup(ChildId),
    exit(Agent, kill),
    wait_until(fun() ->
                       erlang:garbage_collect(),
                       {ok, Chain} = ?T:get_trace_chain(T),
                       [abandoned] =:= [O || #{span_id := S, outcome := O} <- Chain,
                                             S =:= ChildId]
               end).

flags() ->
    add(<<"a">>, echo_agent()),
    Flags = fun(Req) ->
                    {ok, _, _} = erlmcp_flow:execute(#{}, Req),
                    receive {task_seen, _, _, #{trace_flags := F}} -> F end
            end,
    %% a trace erlmcp_flow starts is sampled and random
    ?assertEqual(3, Flags(#{})),
    Caller = fun(F) -> <<"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-", F/binary>> end,
    %% the caller's flags pass on; the reserved ones are zeroed
    ?assertEqual(2, Flags(#{traceparent => Caller(<<"02">>)})),
    ?assertEqual(0, Flags(#{traceparent => Caller(<<"00">>)})),
    ?assertEqual(3, Flags(#{traceparent => Caller(<<"ff">>)})).
