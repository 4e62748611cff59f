%% Retries, fallbacks, timeouts and bulkheads through execute/3, with real
%% agent processes. Backoffs are made 0-1 ms through the call options, so
%% nothing waits long.
-module(erlmcp_flow_resilience_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [raw_agent/1, echo_agent/0, wait_until/1]).

-define(FAST, #{base_retry_delay => 1, max_retry_delay => 1}).

resilience_test_() ->
    {foreach,
     fun erlmcp_flow_test_util:start/0,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             wait_until(fun() -> maps:get(in_flight, erlmcp_flow:stats()) =:= 0 end),
             erlmcp_flow_test_util:assert_clean(),
             erlmcp_flow_test_util:stop(Apps)
     end,
     [{"a failed attempt is retried on another agent", fun retried_elsewhere/0},
      {"retries stop at max_retry_attempts and report every attempt", fun exhausted/0},
      {"only retryable failures are retried", fun not_retryable/0},
      {"idempotent => false gets exactly one attempt", fun idempotent_false/0},
      {"a swarm is the fallback once the agents failed", fun fallback_swarm/0},
      {"a failing fallback ends the task with every attempt", fun fallback_fails/0},
      {"a retry finding every other agent full waits, then is overloaded", fun retry_overloaded/0},
      {"a timed-out attempt is cancelled and retried", fun timeout_retried/0},
      {"a full bulkhead makes callers wait in line, then overloaded", fun bulkhead_wait/0},
      {"the line is first come, first served", fun bulkhead_fifo/0},
      {"a caller killed while waiting or mid-task leaks nothing", fun killed_callers/0},
      {"adaptive timeouts follow the agent's p95", fun adaptive/0}]}.

backoff_test() ->
    %% full jitter: uniform in [0, min(max, base * 2^(n-1))]
    Max = fun(N) -> N end,
    Min = fun(_) -> 1 end,
    ?assertEqual([100, 200, 400, 800, 1600, 3200, 5000, 5000],
                 [erlmcp_flow_retry:backoff(A, 100, 5000, Max) || A <- lists:seq(1, 8)]),
    ?assertEqual([0, 0, 0], [erlmcp_flow_retry:backoff(A, 100, 5000, Min) || A <- [1, 5, 60]]),
    Draws = [erlmcp_flow_retry:backoff(3, 100, 5000) || _ <- lists:seq(1, 2000)],
    ?assert(lists:min(Draws) >= 0 andalso lists:max(Draws) =< 400),
    ?assert(lists:max(Draws) > 300 andalso lists:min(Draws) < 100),
    ?assertEqual(0, erlmcp_flow_retry:backoff(1, 0, 0)).

add(Id, Pid) ->
    ok = erlmcp_flow:register_agent(Id, Pid, [<<"x">>]).

retried_elsewhere() ->
    add(<<"bad">>, raw_agent(fun(_) -> {error, broken} end)),
    add(<<"good">>, echo_agent()),
    [begin
         {ok, _, Meta} = erlmcp_flow:execute(#{}, #{strategy => round_robin}, ?FAST),
         case Meta of
             #{attempts := 1, agent_id := <<"good">>, tried := []} -> ok;
             #{attempts := 2, agent_id := <<"good">>,
               tried := [#{agent_id := <<"bad">>, reason := {agent_error, broken}}]} -> ok
         end
     end || _ <- lists:seq(1, 6)].

exhausted() ->
    add(<<"bad">>, raw_agent(fun(_) -> {error, broken} end)),
    {error, {no_available_agent, Attempts}} =
        erlmcp_flow:execute(#{}, #{}, ?FAST#{max_retry_attempts => 2}),
    ?assertEqual(3, length(Attempts)),
    [?assertMatch(#{agent_id := <<"bad">>, reason := {agent_error, broken},
                    latency_us := L} when is_integer(L), A) || A <- Attempts],
    {error, {no_available_agent, [_]}} =
        erlmcp_flow:execute(#{}, #{}, ?FAST#{max_retry_attempts => 0}).

not_retryable() ->
    ?assertEqual(false, erlmcp_flow_retry:retryable(no_agents_available)),
    ?assertEqual(false, erlmcp_flow_retry:retryable({badarg, x})),
    [?assert(erlmcp_flow_retry:retryable(R))
     || R <- [execution_timeout, {agent_down, x}, {agent_error, x}, {bad_agent_reply, x}]],
    ?assertEqual({error, no_agents_available}, erlmcp_flow:execute(#{}, #{}, ?FAST)),
    ?assertEqual({error, {badarg, {unknown_option, retries}}},
                 erlmcp_flow:execute(#{}, #{}, #{retries => 1})),
    ?assertEqual({error, {badarg, {max_retry_attempts, -1}}},
                 erlmcp_flow:execute(#{}, #{}, #{max_retry_attempts => -1})),
    ?assertEqual({error, {badarg, {idempotent, 'maybe'}}},
                 erlmcp_flow:execute(#{}, #{idempotent => 'maybe'})).

idempotent_false() ->
    Self = self(),
    add(<<"bad">>, raw_agent(fun(_) -> Self ! seen, {error, broken} end)),
    add(<<"good">>, echo_agent()),
    Answers = [erlmcp_flow:execute(#{}, #{idempotent => false, strategy => round_robin}, ?FAST)
               || _ <- lists:seq(1, 4)],
    ?assertEqual(2, length([ok || {ok, _, #{attempts := 1}} <- Answers])),
    ?assertEqual(2, length([e || {error, {agent_error, broken}} <- Answers])),
    ?assertEqual(2, length(drain(seen))).

fallback_fails() ->
    add(<<"bad">>, raw_agent(fun(_) -> {error, broken} end)),
    ok = erlmcp_flow:register_swarm(<<"swarm">>, raw_agent(fun(_) -> {error, down} end),
                                    [<<"x">>]),
    %% the agent fails, then the swarm: no agent is left to answer
    ?assertMatch({error, {no_available_agent, [#{agent_id := <<"bad">>, reason := {agent_error, broken}},
                                               #{agent_id := <<"swarm">>, reason := {agent_error, down}}]},
                  #{attempts := 2}},
                 erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>]},
                                     ?FAST#{max_retry_attempts => 0, error_meta => true})).

retry_overloaded() ->
    add(<<"busy">>, raw_agent(fun(_) -> noreply end)),
    Holders = [spawn_caller(#{timeout => infinity}, #{}) || _ <- lists:seq(1, 10)],
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"busy">>) =:= 10 end),
    add(<<"bad">>, raw_agent(fun(_) -> {error, broken} end)),
    %% the first attempt can only go to bad, which fails; its retry finds
    %% busy full and waits out the routing timeout in the line
    ?assertEqual({error, overloaded},
                 erlmcp_flow:execute(#{}, #{}, ?FAST#{routing_timeout => 30})),
    [exit(H, kill) || H <- Holders],
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"busy">>) =:= 0 end).

fallback_swarm() ->
    add(<<"bad">>, raw_agent(fun(_) -> {error, broken} end)),
    ok = erlmcp_flow:register_swarm(<<"swarm">>, echo_agent(), [<<"x">>]),
    %% exclude the swarm from the first attempts by making it the fallback:
    %% with no retries, the one attempt that fails on the agent falls back
    Answers = [erlmcp_flow:execute(#{}, #{strategy => round_robin}, ?FAST#{max_retry_attempts => 0})
               || _ <- lists:seq(1, 6)],
    [?assertMatch({ok, _, #{agent_id := <<"swarm">>}}, A) || A <- Answers],
    ?assert(lists:any(fun({ok, _, #{attempts := 2, tried := [#{agent_id := <<"bad">>}]}}) -> true;
                         (_) -> false end, Answers)).

timeout_retried() ->
    Self = self(),
    add(<<"hang">>, raw_agent(fun(_) -> noreply end)),
    add(<<"good">>, echo_agent()),
    Answers = [erlmcp_flow:execute(#{}, #{strategy => round_robin, timeout => 20}, ?FAST)
               || _ <- lists:seq(1, 4)],
    [?assertMatch({ok, _, #{agent_id := <<"good">>}}, A) || A <- Answers],
    Timeouts = [T || {ok, _, #{tried := [#{reason := execution_timeout} = T]}} <- Answers],
    ?assert(length(Timeouts) >= 2),
    %% each timed-out attempt was cancelled on its agent
    ?assertEqual(length(Timeouts), length([R || {cancelled, _, R} <- drain_all()])),
    _ = Self.

bulkhead_wait() ->
    Hang = raw_agent(fun(_) -> noreply end),
    add(<<"one">>, Hang),
    Callers = [spawn_caller(#{timeout => infinity}, #{}) || _ <- lists:seq(1, 10)],
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"one">>) =:= 10 end),
    %% the eleventh waits out its routing timeout, then is overloaded
    ?assertEqual({error, overloaded},
                 erlmcp_flow:execute(#{}, #{idempotent => false}, #{routing_timeout => 30})),
    [exit(C, kill) || C <- Callers],
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"one">>) =:= 0 end).

bulkhead_fifo() ->
    Gate = raw_agent(fun(_) -> noreply end),
    add(<<"one">>, Gate),
    Holders = [spawn_caller(#{timeout => infinity}, #{}) || _ <- lists:seq(1, 10)],
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"one">>) =:= 10 end),
    Self = self(),
    %% three callers queue in order
    Waiters = [begin
                   W = spawn(fun() ->
                                     R = erlmcp_flow:execute(#{w => N}, #{idempotent => false,
                                                                          timeout => infinity},
                                                             #{routing_timeout => 5000}),
                                     Self ! {done, N, R}
                             end),
                   wait_until(fun() -> erlmcp_flow_bulkhead:waiting() =:= N end),
                   W
               end || N <- lists:seq(1, 3)],
    %% free permits one by one: the waiters get them in arrival order
    Order = [begin
                 exit(lists:nth(K, Holders), kill),
                 receive {task_seen, Gate, #{w := N}, _} -> N end
             end || K <- lists:seq(1, 3)],
    ?assertEqual([1, 2, 3], Order),
    [exit(P, kill) || P <- Holders ++ Waiters],
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"one">>) =:= 0 end),
    ?assertEqual(0, erlmcp_flow_bulkhead:waiting()).

killed_callers() ->
    Hang = raw_agent(fun(_) -> noreply end),
    add(<<"one">>, Hang),
    Holders = [spawn_caller(#{timeout => infinity}, #{}) || _ <- lists:seq(1, 10)],
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"one">>) =:= 10 end),
    Waiter = spawn_caller(#{timeout => infinity}, #{routing_timeout => 60000}),
    wait_until(fun() -> erlmcp_flow_bulkhead:waiting() =:= 1 end),
    exit(Waiter, kill),
    wait_until(fun() -> erlmcp_flow_bulkhead:waiting() =:= 0 end),
    [exit(H, kill) || H <- Holders],
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"one">>) =:= 0 end),
    ?assertMatch({ok, #{abandoned := 10, in_flight := 0}}, erlmcp_flow:agent_stats(<<"one">>)),
    %% their spans closed as abandoned, the waiter's too
    wait_until(fun() -> maps:get(correlation_open, erlmcp_flow:stats()) =:= 0 end),
    ?assertMatch(#{correlation_entries := 21}, erlmcp_flow:stats()).

adaptive() ->
    _ = application:stop(erlmcp_flow),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, timeouts, #{adaptive => true}),
    try
        {ok, _} = application:ensure_all_started(erlmcp_flow),
        Slowish = raw_agent(fun(T) -> receive after 5 -> ok end, {ok, T} end),
        add(<<"a">>, Slowish),
        [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 5)],
        {ok, #{p95_us := P95}} = erlmcp_flow:agent_stats(<<"a">>),
        ?assert(P95 >= 5000),
        %% 2 x p95 is ~10 ms, clamped up to 1 s: a task of 200 ms still succeeds
        Slow = raw_agent(fun(T) -> receive after 200 -> ok end, {ok, T} end),
        ok = erlmcp_flow:unregister_agent(<<"a">>),
        add(<<"a">>, Slow),
        [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 2)],
        %% with an explicit timeout the adaptive one is not used
        ?assertEqual({error, execution_timeout},
                     erlmcp_flow:execute(#{}, #{timeout => 50, idempotent => false}))
    after
        application:unset_env(erlmcp_flow, timeouts)
    end.

spawn_caller(Req, Opts) ->
    spawn(fun() -> erlmcp_flow:execute(#{}, Req#{idempotent => false}, Opts) end).

drain(Tag) ->
    receive Tag -> [Tag | drain(Tag)] after 0 -> [] end.

drain_all() ->
    receive M -> [M | drain_all()] after 0 -> [] end.
