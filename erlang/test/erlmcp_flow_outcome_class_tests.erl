%% The three classes of a task's outcome, with real agent processes: an
%% answer (`{ok, _}'), a refusal of the caller's task (`{reject, Reason}',
%% answered as `{error, {rejected, Reason}}') and the agent's fault (`{error,
%% _}', a crash, a timeout). A refusal is answered as is, never retried,
%% never counted by the breaker, learned as an answer; its class shows in
%% the span, the metrics, the agent's figures and the JSON-RPC answer.
-module(erlmcp_flow_outcome_class_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [raw_agent/1, wait_until/1]).

-define(FAST, #{base_retry_delay => 1, max_retry_delay => 1}).

classes_test_() ->
    {foreach,
     fun() ->
             _ = application:load(erlmcp_flow),
             ok = application:set_env(erlmcp_flow, circuit_breaker,
                                      #{failure_threshold => 3, min_requests => 3, timeout => 60000}),
             erlmcp_flow_test_util:start()
     end,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             wait_until(fun() -> maps:get(in_flight, erlmcp_flow:stats()) =:= 0 end),
             erlmcp_flow_test_util:assert_clean(),
             erlmcp_flow_test_util:stop(Apps),
             application:unset_env(erlmcp_flow, circuit_breaker)
     end,
     [{"an agent that rejects every task keeps its breaker closed and serves others",
       fun rejecting_agent_stays_in_service/0},
      {"a failing agent still opens its breaker", fun failing_agent_opens/0},
      {"a rejection is never retried, whatever the attempts before it",
       fun rejection_is_final/0},
      {"the behaviour's {reject, Reason, State} and reply/2", fun behaviour_rejects/0},
      {"the class in the span, the metrics and the agent's figures", fun class_is_visible/0},
      {"JSON-RPC callers get the refusal as the agent gave it", fun jsonrpc_answers/0}]}.

add(Id, Pid) ->
    ok = erlmcp_flow:register_agent(Id, Pid, [<<"x">>]).

%% Ten (and more) tasks with bad arguments, each refused by the agent: its
%% breaker stays closed, and a good task from another caller still reaches
%% it (it is the only agent).
rejecting_agent_stays_in_service() ->
    Picky = raw_agent(fun(#{args := good}) -> {ok, done};
                         (_) -> {reject, bad_arguments}
                      end),
    add(<<"picky">>, Picky),
    [?assertEqual({error, {rejected, bad_arguments}},
                  erlmcp_flow:execute(#{args => bad}, #{}, ?FAST))
     || _ <- lists:seq(1, 12)],
    {ok, Stats} = erlmcp_flow:agent_stats(<<"picky">>),
    ?assertMatch(#{breaker := closed, rejected := 12, failed := 0, succeeded := 0}, Stats),
    %% still served: the refusals were the callers' mistakes
    ?assertMatch({ok, done, #{agent_id := <<"picky">>}},
                 erlmcp_flow:execute(#{args => good}, #{}, ?FAST)),
    %% learned as answers: its success rate did not fall
    {ok, #{success_rate := SR}} = erlmcp_flow:agent_stats(<<"picky">>),
    ?assert(SR > 0.99).

failing_agent_opens() ->
    add(<<"broken">>, raw_agent(fun(_) -> {error, broken} end)),
    [erlmcp_flow:execute(#{}, #{idempotent => false}, ?FAST) || _ <- lists:seq(1, 5)],
    {ok, Stats} = erlmcp_flow:agent_stats(<<"broken">>),
    ?assertMatch(#{breaker := open, rejected := 0}, Stats),
    ?assertEqual({error, no_agents_available}, erlmcp_flow:execute(#{}, #{}, ?FAST)).

%% The first agent fails (retried), the second refuses: the caller gets the
%% refusal, the last attempt's own answer, and no third attempt is made (a
%% retry would go back to the first agent, the only other one).
rejection_is_final() ->
    Self = self(),
    add(<<"a-fails">>, raw_agent(fun(_) -> Self ! tried_a, {error, broken} end)),
    add(<<"b-refuses">>, raw_agent(fun(_) -> Self ! tried_b, {reject, not_for_me} end)),
    Answer = first_through_a(),
    ?assertMatch({error, {rejected, not_for_me}, #{attempts := 2}}, Answer),
    {error, _, #{tried := Tried}} = Answer,
    ?assertMatch([#{agent_id := <<"a-fails">>, reason := {agent_error, broken}},
                  #{agent_id := <<"b-refuses">>, reason := {rejected, not_for_me}}], Tried).

%% Tasks until one starts on a-fails; the tries of that one are counted.
first_through_a() ->
    Answer = erlmcp_flow:execute(#{}, #{strategy => round_robin}, ?FAST#{error_meta => true}),
    Tries = tries([]),
    case Answer of
        {error, {rejected, _}, #{tried := [#{agent_id := <<"a-fails">>} | _]}} ->
            ?assertEqual([tried_a, tried_b], Tries),
            Answer;
        _ ->
            first_through_a()
    end.

tries(Acc) ->
    receive
        T when T =:= tried_a; T =:= tried_b -> tries([T | Acc])
    after 0 -> lists:reverse(Acc)
    end.

behaviour_rejects() ->
    {ok, Pid} = erlmcp_flow_agent:start(<<"strict">>, [<<"x">>], erlmcp_flow_test_agent,
                                        #{owner => self()}),
    ?assertEqual({error, {rejected, no_op}},
                 erlmcp_flow:execute(#{op => reject, reason => no_op}, #{}, ?FAST)),
    %% a deferred answer may refuse too
    ?assertEqual({error, {rejected, later}},
                 erlmcp_flow:execute(#{op => reject_later, reason => later}, #{}, ?FAST)),
    {ok, #{rejected := 2, failed := 0}} = erlmcp_flow:agent_stats(<<"strict">>),
    erlmcp_flow_agent:stop(Pid).

class_is_visible() ->
    add(<<"picky">>, raw_agent(fun(_) -> {reject, bad_arguments} end)),
    Before = erlmcp_flow:stats(),
    {error, {rejected, bad_arguments}, #{trace_id := TraceId}} =
        erlmcp_flow:execute(#{}, #{}, ?FAST#{error_meta => true}),
    After = erlmcp_flow:stats(),
    ?assertEqual(maps:get(tasks_rejected, Before) + 1, maps:get(tasks_rejected, After)),
    ?assertEqual(maps:get(tasks_failed, Before), maps:get(tasks_failed, After)),
    {ok, Spans} = erlmcp_flow_correlation_tracker:get_trace_chain(TraceId),
    ?assertEqual([rejected, rejected], lists:sort([O || #{outcome := O} <- Spans])),
    %% Prometheus: the task by outcome, the agent's refusals
    Text = iolist_to_binary(erlmcp_flow_prometheus:render()),
    ?assertMatch({match, _}, re:run(Text, "erlmcp_flow_tasks_total\\{outcome=\"rejected\"\\} 1")),
    ?assertMatch({match, _}, re:run(Text, "erlmcp_flow_agent_rejected_total\\{agent=\"picky\"\\} 1")),
    %% the status page's row
    #{items := [Row]} = maps:get(agents, erlmcp_flow_status:document(#{})),
    ?assertMatch(#{id := <<"picky">>, rejected := 1}, Row).

%% Over JSON-RPC: an Erlang agent's refusal is -32010 with its reason as
%% JSON (no Erlang term text), a tool's error result verbatim.
jsonrpc_answers() ->
    add(<<"picky">>, raw_agent(fun(#{<<"why">> := W}) -> {reject, #{field => W}};
                                  (#{<<"tool">> := _}) ->
                                       {reject, {tool_error, #{<<"content">> => [], <<"isError">> => true}}}
                               end)),
    ?assertEqual({error, -32010, <<"Rejected by the agent">>,
                  #{class => rejected, reason => #{field => <<"age">>}}},
                 erlmcp_flow_rpc:handle(<<"flow.route_task">>,
                                        #{<<"task">> => #{<<"why">> => <<"age">>}},
                                        #{transport => http})),
    ?assertEqual({error, -32010, <<"Rejected by the agent">>,
                  #{class => rejected,
                    result => #{<<"content">> => [], <<"isError">> => true}}},
                 erlmcp_flow_rpc:handle(<<"flow.route_task">>,
                                        #{<<"task">> => #{<<"tool">> => <<"t">>}},
                                        #{transport => http})).
