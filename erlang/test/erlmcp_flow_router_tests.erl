%% execute/2,3 and route_task/2: the path of one task, with real agent processes.
-module(erlmcp_flow_router_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0, raw_agent/1, sync_registry/0, wait_until/1]).

router_test_() ->
    {foreach,
     fun erlmcp_flow_test_util:start/0,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:assert_clean(),
             erlmcp_flow_test_util:stop(Apps)
     end,
     [{"a task is answered with its meta", fun answered/0},
      {"no agent holds the capabilities", fun no_agents/0},
      {"an agent's error is returned as agent_error", fun agent_error/0},
      {"a malformed answer is refused", fun bad_reply/0},
      {"a timeout cancels the task and drops the late answer", fun timeout/0},
      {"an agent dying mid-task answers agent_down", fun agent_down/0},
      {"malformed tasks, requirements and options", fun badargs/0},
      {"round robin spreads tasks evenly", fun round_robin/0},
      {"the agent gets the task's trace context", fun trace_context/0},
      {"route_task dispatches and reports to reply_to", fun route_task/0},
      {"route_task without reply_to still completes", fun route_task_silent/0},
      {"route_task times out like execute", fun route_task_timeout/0},
      {"a caller killed mid-task leaks no load", fun caller_killed/0},
      {"concurrent callers each get one answer", fun concurrent/0},
      {"every strategy routes through execute", fun every_strategy/0},
      {"consistent hashing sticks to the key or the task id", fun sticky/0},
      {"the ring is built by the first task routed by key, then follows membership", fun lazy_ring/0},
      {"consistent hashing sends each key where cargo does (shared vectors)", fun ring_vectors/0},
      {"weights given at registration steer weighted", fun weights/0},
      {"times past the VM's limit are refused by name", fun time_bounds/0},
      {"route_task refuses such a timeout before dispatching", fun route_task_bounds/0},
      {"route_task answers reply_to when its waiter is stopped", fun route_task_stopped/0},
      {"headers and keys past their limits are refused unscanned", fun header_limits/0},
      {"agents answering twice, late or with another ref leave nothing behind", fun duplicate_answers/0}]}.

%% tests/vectors/ring.json: the agent each key goes to, as cargo computes it
ring_vectors() ->
    lists:foreach(
      fun(#{<<"agents">> := Ids, <<"keys">> := Keys, <<"owners">> := Owners}) ->
              [register(Id, echo_agent(), [<<"ring">>]) || Id <- Ids],
              Got = [begin
                         {ok, _, #{agent_id := A}} =
                             erlmcp_flow:execute(#{}, #{capabilities => [<<"ring">>],
                                                        strategy => consistent_hash,
                                                        sticky_key => K}),
                         A
                     end || K <- Keys],
              ?assertEqual(Owners, Got),
              erlmcp_flow_test_util:unregister_all()
      end, erlmcp_flow_test_json:vectors("ring.json")).

register(Id, Pid, Caps) ->
    ok = erlmcp_flow:register_agent(Id, Pid, Caps).

load_is_zero(Id) ->
    fun() -> erlmcp_flow:get_agent_load(Id) =:= 0 end.

answered() ->
    register(<<"a">>, echo_agent(), [<<"echo">>]),
    {ok, Result, Meta} = erlmcp_flow:execute(#{n => 1}, #{capabilities => [<<"echo">>]}),
    ?assertEqual(#{n => 1}, Result),
    ?assertMatch(#{agent_id := <<"a">>, attempts := 1}, Meta),
    #{trace_id := TraceId, latency_us := Lat} = Meta,
    ?assertEqual(32, byte_size(TraceId)),
    ?assert(is_integer(Lat) andalso Lat >= 0),
    ?assertMatch({ok, #{succeeded := 1, in_flight := 0}}, erlmcp_flow:agent_stats(<<"a">>)),
    %% no requirements at all: any agent
    ?assertMatch({ok, _, _}, erlmcp_flow:execute(#{}, #{})),
    ?assertMatch({ok, _, _}, erlmcp_flow:execute(#{}, #{}, #{timeout => 1000})),
    ?assertEqual([], stray()).

no_agents() ->
    ?assertEqual({error, no_agents_available}, erlmcp_flow:execute(#{}, #{})),
    register(<<"a">>, echo_agent(), [<<"x">>]),
    ?assertEqual({error, no_agents_available},
                 erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>, <<"y">>]})).

agent_error() ->
    register(<<"a">>, raw_agent(fun(_) -> {error, busy} end), [<<"x">>]),
    ?assertEqual({error, {agent_error, busy}}, erlmcp_flow:execute(#{}, #{idempotent => false})),
    ?assertMatch({ok, #{failed := 1, in_flight := 0}}, erlmcp_flow:agent_stats(<<"a">>)).

bad_reply() ->
    register(<<"a">>, raw_agent(fun(_) -> what end), [<<"x">>]),
    ?assertEqual({error, {bad_agent_reply, what}}, erlmcp_flow:execute(#{}, #{idempotent => false})),
    ?assertMatch({ok, #{failed := 1, in_flight := 0}}, erlmcp_flow:agent_stats(<<"a">>)).

timeout() ->
    Self = self(),
    Agent = raw_agent(fun(_) -> noreply end),
    register(<<"a">>, Agent, [<<"x">>]),
    ?assertEqual({error, execution_timeout}, erlmcp_flow:execute(#{}, #{timeout => 20, idempotent => false})),
    Ref = receive {task_seen, Agent, _, _} -> receive {cancelled, Agent, R} -> R end end,
    ?assertMatch({ok, #{timed_out := 1, in_flight := 0}}, erlmcp_flow:agent_stats(<<"a">>)),
    %% an answer after the timeout goes to an inactive alias and is dropped
    Ref ! {task_result, Ref, {ok, late}},
    Self ! marker,
    ?assertEqual([marker], flush()).

agent_down() ->
    Agent = raw_agent(fun(_) -> exit(self(), kill) end),
    register(<<"a">>, Agent, [<<"x">>]),
    ?assertEqual({error, {agent_down, killed}}, erlmcp_flow:execute(#{}, #{idempotent => false})),
    sync_registry(),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"a">>)),
    ?assertMatch(#{in_flight := 0}, erlmcp_flow:stats()).

badargs() ->
    register(<<"a">>, echo_agent(), [<<"x">>]),
    %% a quorum task opens its span first: a bad traceparent is refused there
    ?assertEqual({error, {badarg, {traceparent, <<"00-zz">>}}},
                 erlmcp_flow:execute(#{}, #{quorum => true, traceparent => <<"00-zz">>})),
    Cases = [{{badarg, task}, [[not_a_map], #{}, #{}]},
             {{badarg, requirements}, [#{}, [{capabilities, []}], #{}]},
             {{badarg, opts}, [#{}, #{}, []]},
             {{badarg, {unknown_requirement, capabilites}}, [#{}, #{capabilites => []}, #{}]},
             {{badarg, {unknown_requirement, reply_to}}, [#{}, #{reply_to => self()}, #{}]},
             {{badarg, {unknown_option, retries}}, [#{}, #{}, #{retries => 3}]},
             {{badarg, {capabilities, <<"x">>}}, [#{}, #{capabilities => <<"x">>}, #{}]},
             {{badarg, {capabilities, [x]}}, [#{}, #{capabilities => [x]}, #{}]},
             {{badarg, {capabilities, [<<"x">> | y]}}, [#{}, #{capabilities => [<<"x">> | y]}, #{}]},
             {{badarg, {strategy, fastest}}, [#{}, #{strategy => fastest}, #{}]},
             {{badarg, {sticky_key, 42}}, [#{}, #{sticky_key => 42}, #{}]},
             {{badarg, sticky_key}, [#{}, #{strategy => consistent_hash}, #{}]},
             {{badarg, {timeout, 0}}, [#{}, #{timeout => 0}, #{}]},
             {{badarg, {timeout, -5}}, [#{}, #{}, #{timeout => -5}]},
             {{badarg, {timeout, soon}}, [#{}, #{timeout => soon}, #{}]}],
    [?assertEqual({error, Reason}, apply(erlmcp_flow, execute, Args)) || {Reason, Args} <- Cases],
    ?assertEqual({error, {badarg, task}}, erlmcp_flow:route_task(task, #{})),
    ?assertEqual({error, {badarg, {reply_to, me}}}, erlmcp_flow:route_task(#{}, #{reply_to => me})),
    ?assertMatch({ok, #{dispatched := 0}}, erlmcp_flow:agent_stats(<<"a">>)).

round_robin() ->
    Ids = [<<"a">>, <<"b">>, <<"c">>, <<"d">>, <<"e">>],
    [register(Id, echo_agent(), [<<"x">>]) || Id <- Ids],
    Picks = [begin
                 {ok, _, #{agent_id := Id}} = erlmcp_flow:execute(#{}, #{strategy => round_robin}),
                 Id
             end || _ <- lists:seq(1, 52)],
    Counts = [length([P || P <- Picks, P =:= Id]) || Id <- Ids],
    ?assert(lists:max(Counts) - lists:min(Counts) =< 1).

trace_context() ->
    Agent = raw_agent(fun(_) -> {ok, done} end),
    register(<<"a">>, Agent, [<<"x">>]),
    {ok, done, #{trace_id := TraceId}} = erlmcp_flow:execute(#{}, #{}),
    %% a new trace: sampled, and random (Level 2) since its id is
    receive
        {task_seen, Agent, _, Ctx} ->
            ?assertMatch(#{trace_id := TraceId, span_id := <<_:16/binary>>, trace_flags := 3}, Ctx)
    end.

route_task() ->
    register(<<"a">>, echo_agent(), [<<"x">>]),
    {ok, <<"a">>, #{trace_id := TraceId}} =
        erlmcp_flow:route_task(#{n => 2}, #{capabilities => [<<"x">>], reply_to => self()}),
    receive
        {erlmcp_flow_result, TraceId, Answer} ->
            ?assertMatch({ok, #{n := 2}, #{agent_id := <<"a">>, trace_id := TraceId}}, Answer)
    end,
    wait_until(load_is_zero(<<"a">>)),
    ?assertMatch({ok, #{succeeded := 1}}, erlmcp_flow:agent_stats(<<"a">>)),
    ?assertEqual({error, no_agents_available}, erlmcp_flow:route_task(#{}, #{capabilities => [<<"q">>]})).

route_task_silent() ->
    register(<<"a">>, raw_agent(fun(_) -> {error, nope} end), [<<"x">>]),
    {ok, <<"a">>, _} = erlmcp_flow:route_task(#{}, #{}),
    wait_until(fun() ->
                       {ok, #{failed := F, in_flight := N}} = erlmcp_flow:agent_stats(<<"a">>),
                       F =:= 1 andalso N =:= 0
               end),
    ?assertEqual([], stray()).

route_task_timeout() ->
    Agent = raw_agent(fun(_) -> noreply end),
    register(<<"a">>, Agent, [<<"x">>]),
    {ok, <<"a">>, #{trace_id := T}} = erlmcp_flow:route_task(#{}, #{timeout => 10, reply_to => self()}),
    receive {erlmcp_flow_result, T, Answer} -> ?assertEqual({error, execution_timeout}, Answer) end,
    receive {cancelled, Agent, _} -> ok end,
    wait_until(load_is_zero(<<"a">>)).

caller_killed() ->
    Agent = raw_agent(fun(_) -> noreply end),
    register(<<"a">>, Agent, [<<"x">>]),
    {Caller, MRef} = spawn_monitor(fun() -> erlmcp_flow:execute(#{}, #{timeout => infinity}) end),
    receive {task_seen, Agent, _, _} -> ok end,
    ?assertEqual(1, erlmcp_flow:get_agent_load(<<"a">>)),
    exit(Caller, kill),
    receive {'DOWN', MRef, process, Caller, killed} -> ok end,
    wait_until(load_is_zero(<<"a">>)),
    ?assertMatch({ok, #{abandoned := 1}}, erlmcp_flow:agent_stats(<<"a">>)).

concurrent() ->
    [register(<<"a", (integer_to_binary(I))/binary>>, echo_agent(), [<<"x">>]) || I <- lists:seq(1, 4)],
    Self = self(),
    Callers = [spawn_link(fun() ->
                                  Answers = [erlmcp_flow:execute(#{c => C, i => I}, #{})
                                             || I <- lists:seq(1, 100)],
                                  Self ! {answers, self(), Answers, flush()}
                          end) || C <- lists:seq(1, 8)],
    All = [receive {answers, C, A, Stray} -> ?assertEqual([], Stray), A end || C <- Callers],
    ?assertEqual(800, length([ok || {ok, _, _} <- lists:append(All)])),
    ?assertMatch(#{in_flight := 0}, erlmcp_flow:stats()).

every_strategy() ->
    [register(<<"a", (integer_to_binary(I))/binary>>, echo_agent(), [<<"x">>]) || I <- lists:seq(1, 3)],
    [?assertMatch({ok, #{n := 1}, #{agent_id := <<"a", _/binary>>}},
                  erlmcp_flow:execute(#{n => 1, id => 7}, #{strategy => S, task_class => reviews}))
     || S <- erlmcp_flow_requirements:strategies(), _ <- lists:seq(1, 5)],
    ?assertMatch(#{episodes := 30, in_flight := 0}, erlmcp_flow:stats()).

sticky() ->
    [register(<<"a", (integer_to_binary(I))/binary>>, echo_agent(), [<<"x">>]) || I <- lists:seq(1, 8)],
    Owner = fun(Task, Req) ->
                    {ok, _, #{agent_id := Id}} = erlmcp_flow:execute(Task, Req#{strategy => consistent_hash}),
                    Id
            end,
    ByKey = lists:usort([Owner(#{}, #{sticky_key => <<"user-42">>}) || _ <- lists:seq(1, 10)]),
    ByTaskId = lists:usort([Owner(#{id => {order, 7}}, #{}) || _ <- lists:seq(1, 10)]),
    ?assertMatch([_], ByKey),
    ?assertMatch([_], ByTaskId),
    %% many keys spread over the agents
    Spread = lists:usort([Owner(#{}, #{sticky_key => integer_to_binary(K)}) || K <- lists:seq(1, 200)]),
    ?assert(length(Spread) >= 6).

lazy_ring() ->
    Ids = [<<"r", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 50)],
    [register(Id, echo_agent(), [<<"x">>]) || Id <- Ids],
    %% no point of the ring is kept before a task is routed by key
    #{table_bytes := Before} = erlmcp_flow:memory(),
    Owner = fun(Key) ->
                    {ok, _, #{agent_id := Id}} =
                        erlmcp_flow:execute(#{}, #{strategy => consistent_hash, sticky_key => Key}),
                    Id
            end,
    %% the first task by key here is a routed one (route_task/2)
    {ok, First, _} = erlmcp_flow:route_task(#{}, #{strategy => consistent_hash,
                                                  sticky_key => <<"k">>}),
    #{table_bytes := After} = erlmcp_flow:memory(),
    %% 150 points of 8 bytes an agent
    ?assert(After - Before >= 50 * 150 * 8),
    ?assertEqual(First, Owner(<<"k">>)),
    %% an agent registered after the build is on the ring: the keys it owns
    %% now go to it
    register(<<"late">>, echo_agent(), [<<"x">>]),
    Late = [K || K <- lists:seq(1, 400), Owner(integer_to_binary(K)) =:= <<"late">>],
    ?assert(length(Late) > 0),
    %% and one unregistered is left out
    ok = erlmcp_flow:unregister_agent(<<"late">>),
    sync_registry(),
    ?assertEqual([], [K || K <- Late, Owner(integer_to_binary(K)) =:= <<"late">>]).

weights() ->
    ok = erlmcp_flow:register_agent(<<"light">>, echo_agent(), [<<"x">>], #{weight => 1}),
    ok = erlmcp_flow:register_agent(<<"heavy">>, echo_agent(), [<<"x">>], #{weight => 9.0}),
    ?assertEqual({error, {badarg, {weight, 0}}}, erlmcp_flow:register_agent(<<"w">>, echo_agent(), [<<"x">>], #{weight => 0})),
    ?assertEqual({error, {badarg, {unknown_option, colour}}}, erlmcp_flow:register_agent(<<"w">>, echo_agent(), [<<"x">>], #{colour => red})),
    ?assertEqual({error, {badarg, opts}}, erlmcp_flow:register_agent(<<"w">>, echo_agent(), [<<"x">>], [])),
    ?assertMatch({ok, #{weight := 9.0}}, erlmcp_flow:agent_stats(<<"heavy">>)),
    ok = erlmcp_flow_q_learning:reset(),
    %% leases settle with learning on, so compare shares loosely
    Picks = [begin {ok, _, #{agent_id := Id}} = erlmcp_flow:execute(#{}, #{strategy => weighted}), Id end
             || _ <- lists:seq(1, 400)],
    Heavy = length([P || P <- Picks, P =:= <<"heavy">>]),
    ?assert(Heavy > 280).

flush() ->
    receive M -> [M | flush()] after 0 -> [] end.

%% Messages other than the test agents' reports: a second answer would be one.
stray() ->
    [M || M <- flush(), element(1, M) =/= task_seen].

%% Requirements and options with times of 2^32 ms or more: named errors
%% (they are not legal `receive ... after' values).
time_bounds() ->
    register(<<"a">>, echo_agent(), [<<"a">>]),
    Max = erlmcp_flow_config:max_ms(),
    Caps = #{capabilities => [<<"a">>]},
    ?assertEqual({error, {badarg, {timeout, 4294967296}}},
                 erlmcp_flow:execute(#{}, Caps#{timeout => 4294967296})),
    ?assertEqual({error, {badarg, {timeout, 4294967296}}},
                 erlmcp_flow:execute(#{}, Caps, #{timeout => 4294967296})),
    [?assertEqual({error, {badarg, {K, 1 bsl 40}}},
                  erlmcp_flow:execute(#{}, Caps, #{K => 1 bsl 40}))
     || K <- [base_retry_delay, max_retry_delay, routing_timeout]],
    ?assertEqual({error, {badarg, {max_retry_attempts, 101}}},
                 erlmcp_flow:execute(#{}, Caps, #{max_retry_attempts => 101})),
    %% the largest legal values work
    ?assertMatch({ok, _, _}, erlmcp_flow:execute(#{}, Caps#{timeout => Max},
                                                 #{routing_timeout => Max,
                                                   base_retry_delay => Max,
                                                   max_retry_delay => Max})),
    %% an agent's error with the largest backoff: still one answer (no retry
    %% here, so no wait)
    register(<<"b">>, raw_agent(fun(_) -> {error, no} end), [<<"b">>]),
    ?assertMatch({error, {agent_error, no}},
                 erlmcp_flow:execute(#{}, #{capabilities => [<<"b">>], idempotent => false},
                                     #{base_retry_delay => Max, max_retry_delay => Max})),
    ?assertEqual(0, maps:get(correlation_open, erlmcp_flow:stats())),
    ?assertEqual([], stray()).

route_task_bounds() ->
    Agent = raw_agent(fun(T) -> {ok, T} end),
    register(<<"a">>, Agent, [<<"a">>]),
    ?assertEqual({error, {badarg, {timeout, 4294967296}}},
                 erlmcp_flow:route_task(#{}, #{capabilities => [<<"a">>], timeout => 4294967296,
                                               reply_to => self()})),
    %% nothing was dispatched, nothing waits
    ?assertEqual([], supervisor:which_children(erlmcp_flow_task_sup)),
    ?assertEqual([], [M || M <- flush(), element(1, M) =:= task_seen]),
    ?assertEqual(0, erlmcp_flow:get_agent_load(<<"a">>)).

%% The waiter of a routed task is told to stop while the agent sits on the
%% task: reply_to still gets one answer, the agent a cancel, the load its
%% permit back.
route_task_stopped() ->
    Agent = raw_agent(fun(_) -> noreply end),
    register(<<"a">>, Agent, [<<"a">>]),
    {ok, <<"a">>, #{trace_id := TraceId}} =
        erlmcp_flow:route_task(#{}, #{capabilities => [<<"a">>], reply_to => self(),
                                      timeout => 60000}),
    receive {task_seen, Agent, _, _} -> ok end,
    [{_, Waiter, _, _}] = supervisor:which_children(erlmcp_flow_task_sup),
    exit(Waiter, shutdown),
    receive
        {erlmcp_flow_result, TraceId, Answer} ->
            ?assertEqual({error, {stopped, shutdown}}, Answer)
    after 5000 ->
        ?assert(false)
    end,
    receive {cancelled, Agent, _} -> ok end,
    wait_until(load_is_zero(<<"a">>)),
    wait_until(fun() -> maps:get(correlation_open, erlmcp_flow:stats()) =:= 0 end),
    ?assertEqual([], [M || M <- flush(), element(1, M) =:= erlmcp_flow_result]).

header_limits() ->
    register(<<"a">>, echo_agent(), [<<"a">>]),
    Caps = #{capabilities => [<<"a">>]},
    Commas = binary:copy(<<",">>, 1 bsl 20),
    ?assertEqual({error, {badarg, {tracestate, too_long}}},
                 erlmcp_flow:execute(#{}, Caps#{tracestate => Commas})),
    ?assertEqual({error, {badarg, {traceparent, too_long}}},
                 erlmcp_flow:execute(#{}, Caps#{traceparent => binary:copy(<<"0">>, 513)})),
    ?assertEqual({error, {badarg, {sticky_key, too_long}}},
                 erlmcp_flow:execute(#{}, Caps#{strategy => consistent_hash,
                                                sticky_key => binary:copy(<<"k">>, 65537)})),
    ?assertEqual({error, {badarg, {sticky_key, too_long}}},
                 erlmcp_flow:execute(#{id => lists:seq(1, 70000)},
                                     Caps#{strategy => consistent_hash})),
    ?assertEqual({error, {badarg, {task_class, too_long}}},
                 erlmcp_flow:execute(#{}, Caps#{task_class => lists:seq(1, 70000)})),
    %% the longest header the grammar allows still goes through
    Key = fun(I) -> <<"k", (integer_to_binary(I))/binary, (binary:copy(<<"a">>, 250))/binary>> end,
    Long = iolist_to_binary(lists:join(<<",">>, [<<(Key(I))/binary, "=", (binary:copy(<<"v">>, 256))/binary>>
                                                  || I <- lists:seq(1, 32)])),
    ?assertMatch({ok, _, _}, erlmcp_flow:execute(#{}, Caps#{tracestate => Long})),
    ?assertEqual([], stray()).

%% Whatever the agent sends, once execute returns nothing of that task is in
%% the caller's mailbox.
duplicate_answers() ->
    Twice = spawn(fun Loop() ->
                          receive {execute_task, T, _, From, Ref} ->
                                  From ! {task_result, Ref, {ok, T}},
                                  From ! {task_result, Ref, {ok, again}},
                                  From ! {task_result, Ref, {error, thrice}},
                                  Loop()
                          end
                  end),
    register(<<"twice">>, Twice, [<<"twice">>]),
    [?assertMatch({ok, #{i := I}, _}, erlmcp_flow:execute(#{i => I}, #{capabilities => [<<"twice">>]}))
     || I <- lists:seq(1, 40)],
    %% an agent that hands the task to a helper, which answers twice, and
    %% dies just after: the answers come before the 'DOWN'
    Relay = spawn(fun() ->
                          receive {execute_task, T, _, From, Ref} ->
                                  Helper = spawn(fun() -> From ! {task_result, Ref, {ok, T}},
                                                          From ! {task_result, Ref, {ok, T}} end),
                                  M = monitor(process, Helper),
                                  receive {'DOWN', M, _, _, _} -> exit(done) end
                          end
                  end),
    register(<<"relay">>, Relay, [<<"relay">>]),
    ?assertMatch({ok, #{r := 1}, _}, erlmcp_flow:execute(#{r => 1}, #{capabilities => [<<"relay">>]})),
    %% an agent answering a task with another task's reference (the one
    %% before, already settled): that reference's alias is inactive, the
    %% runtime drops the answer
    Stale = spawn(fun() ->
                          receive {execute_task, _, _, From1, Ref1} ->
                                  From1 ! {task_result, Ref1, {ok, first}},
                                  receive {execute_task, _, _, From2, Ref2} ->
                                          From1 ! {task_result, Ref1, {ok, wrong}},
                                          From2 ! {task_result, Ref2, {ok, right}}
                                  end
                          end
                  end),
    register(<<"stale">>, Stale, [<<"stale">>]),
    ?assertMatch({ok, first, _}, erlmcp_flow:execute(#{}, #{capabilities => [<<"stale">>]})),
    ?assertMatch({ok, right, _}, erlmcp_flow:execute(#{}, #{capabilities => [<<"stale">>]})),
    %% and a late answer after a timeout
    Late = spawn(fun() ->
                         receive {execute_task, _, _, From, Ref} ->
                                 receive after 50 -> ok end,
                                 From ! {task_result, Ref, {ok, late}},
                                 From ! {task_result, Ref, {ok, later}}
                         end
                 end),
    register(<<"late">>, Late, [<<"late">>]),
    ?assertEqual({error, execution_timeout},
                 erlmcp_flow:execute(#{}, #{capabilities => [<<"late">>], timeout => 10,
                                            idempotent => false})),
    receive after 100 -> ok end,
    {messages, Left} = process_info(self(), messages),
    ?assertEqual([], [M || M <- Left, element(1, M) =:= task_result]),
    ?assertEqual([], stray()).
