%% @private
%% @doc The path of one task, run in the caller's process: trace context,
%% decision (one NIF call that filters by capability, skips agents whose
%% breaker is open or whose bulkhead is full, picks one with the strategy and
%% takes a lease on it), dispatch, wait, completion (one NIF call that settles
%% the lease, records the outcome in the breaker and teaches the learner).
%% No server sits on this path.
%%
%% A failed attempt (timeout, dead agent, error answer) is retried up to
%% `max_retry_attempts' times after an exponential backoff with full jitter,
%% on an agent not tried yet when there is one; then once on a swarm holding
%% the capabilities; then the task fails with `{no_available_agent,
%% Attempts}'. A task whose requirements say `idempotent => false' gets
%% exactly one attempt. When every capable agent is at its bulkhead limit the
%% caller waits in `erlmcp_flow_bulkhead''s line, up to the routing timeout.
%%
%% The agent is sent `{execute_task, Task, TraceCtx, From, Ref}' where `From'
%% is a process alias of the waiting process (a reference usable with `!') and
%% `Ref' the same reference. When the wait ends (answer, timeout or the agent's
%% death) the alias is deactivated, so a late answer is dropped by the runtime
%% and never reaches the caller's mailbox.
-module(erlmcp_flow_router).

%% API
-export([execute/3]).
-export([route_task/2]).
-export([strategies/0]).
-export([dispatch/3]).
-export([await/5]).

-export_type([plan/0, answer/0, attempt/0]).

-type plan() :: #{capabilities := [erlmcp_flow:capability()],
                  strategy := erlmcp_flow:strategy(),
                  timeout => timeout(),
                  routing_timeout := pos_integer(),
                  max_retry_attempts := non_neg_integer(),
                  base_retry_delay := non_neg_integer(),
                  max_retry_delay := non_neg_integer(),
                  sticky_key => binary(),
                  task_class => term(),
                  idempotent => boolean(),
                  reply_to => pid()}.
-type answer() :: {ok, term(), erlmcp_flow:meta()} | {error, term()}.
%% One failed attempt, as reported in `Meta' and in `no_available_agent'.
-type attempt() :: #{agent_id := erlmcp_flow:agent_id(), reason := term(),
                     latency_us := non_neg_integer() | undefined}.

-define(EXECUTE_KEYS, [capabilities, timeout, strategy, sticky_key, task_class, idempotent]).
-define(ROUTE_KEYS, [reply_to | ?EXECUTE_KEYS]).
-define(OPT_KEYS, [timeout, routing_timeout, max_retry_attempts, base_retry_delay,
                   max_retry_delay]).

%% Adaptive timeouts: twice the agent's p95 latency, within these bounds (ms).
-define(ADAPTIVE_MIN_MS, 1000).
-define(ADAPTIVE_MAX_MS, 30000).

%% @doc The strategies this build implements.
-spec strategies() -> [erlmcp_flow:strategy(), ...].
strategies() ->
    [round_robin, least_connections, weighted, consistent_hash, p2c_ewma, q_learning].

%% @doc Routes `Task' to an agent meeting `Requirements' and waits for its
%% answer, retrying and falling back as the module doc says.
-spec execute(erlmcp_flow:task(), erlmcp_flow:requirements(), erlmcp_flow:execute_opts()) ->
          answer().
execute(Task, Requirements, Opts) ->
    case plan(Task, Requirements, ?EXECUTE_KEYS, Opts) of
        {ok, #{routing_timeout := RT} = Plan} ->
            Ctx = erlmcp_flow_trace:new_context(),
            Deadline = erlang:monotonic_time(millisecond) + RT,
            attempt(Task, Plan, Ctx, Deadline, #{n => 1, tried => [], failed => [],
                                                 phase => agents});
        {error, _} = E ->
            E
    end.

%% @doc Routes `Task' and returns once it is dispatched; a supervised process
%% waits for the answer, completes the decision and, when the requirements
%% name `reply_to', sends it `{erlmcp_flow_result, TraceId, Answer}'. One
%% attempt: no retry, no waiting for a full bulkhead (`{error, overloaded}').
-spec route_task(erlmcp_flow:task(), erlmcp_flow:requirements()) ->
          {ok, erlmcp_flow:agent_id(), erlmcp_flow_trace:context()} | {error, term()}.
route_task(Task, Requirements) ->
    case plan(Task, Requirements, ?ROUTE_KEYS, #{}) of
        {ok, Plan} ->
            Ctx = erlmcp_flow_trace:new_context(),
            case decide(Task, Plan, [], any) of
                {ok, AgentId, Pid, Lease} ->
                    Job = #{task => Task, timeout => attempt_timeout(Plan, AgentId),
                            context => Ctx, agent_id => AgentId, pid => Pid, lease => Lease,
                            reply_to => maps:get(reply_to, Plan, undefined)},
                    {ok, _} = erlmcp_flow_task_sup:start_task(Job),
                    {ok, AgentId, Ctx};
                {error, _} = E ->
                    E
            end;
        {error, _} = E ->
            E
    end.

%% @doc Sends the task to `Pid' under a fresh alias monitor; returns the alias.
-spec dispatch(pid(), erlmcp_flow:task(), erlmcp_flow_trace:context()) -> reference().
dispatch(Pid, Task, Ctx) ->
    Ref = erlang:monitor(process, Pid, [{alias, demonitor}]),
    Pid ! {execute_task, Task, Ctx, Ref, Ref},
    Ref.

%% @doc Waits for the answer of a dispatched task and settles its lease:
%% `{ok, Result, LatencyUs}' or `{error, Reason, LatencyUs}'.
-spec await(reference(), pid(), erlmcp_flow_nif:lease(), timeout(), erlmcp_flow:agent_id()) ->
          {ok, term(), non_neg_integer() | undefined}
        | {error, term(), non_neg_integer() | undefined}.
await(Ref, Pid, Lease, Timeout, AgentId) ->
    receive
        {task_result, Ref, Result} ->
            erlang:demonitor(Ref, [flush]),
            case Result of
                {ok, Value} -> {ok, Value, complete(Lease, ok, AgentId)};
                {error, Reason} -> {error, {agent_error, Reason}, complete(Lease, error, AgentId)};
                Other -> {error, {bad_agent_reply, Other}, complete(Lease, error, AgentId)}
            end;
        {'DOWN', Ref, process, _, Reason} ->
            {error, {agent_down, Reason}, complete(Lease, down, AgentId)}
    after Timeout ->
        erlang:demonitor(Ref, [flush]),
        %% The alias is inactive now; an answer sent just before is the only
        %% one that can still be here.
        receive {task_result, Ref, _} -> ok after 0 -> ok end,
        Pid ! {cancel_task, Ref},
        {error, execution_timeout, complete(Lease, timeout, AgentId)}
    end.

%%====================================================================
%% Internal functions
%%====================================================================

attempt(Task, Plan, Ctx, Deadline, #{n := N, tried := Tried, phase := Phase} = St) ->
    case decide_waiting(Task, Plan, Tried, Phase, Deadline) of
        {ok, AgentId, Pid, Lease} ->
            Ref = dispatch(Pid, Task, Ctx),
            case await(Ref, Pid, Lease, attempt_timeout(Plan, AgentId), AgentId) of
                {ok, Result, Latency} ->
                    {ok, Result, #{agent_id => AgentId, trace_id => maps:get(trace_id, Ctx),
                                   latency_us => Latency, attempts => N,
                                   tried => lists:reverse(maps:get(failed, St))}};
                {error, Reason, Latency} ->
                    failed(Task, Plan, Ctx, Deadline, St,
                           #{agent_id => AgentId, reason => Reason, latency_us => Latency})
            end;
        {error, no_agents_available} when N > 1 ->
            {error, {no_available_agent, lists:reverse(maps:get(failed, St))}};
        {error, _} = E ->
            E
    end.

failed(Task, Plan, Ctx, Deadline, #{n := N, tried := Tried, failed := Failed, phase := Phase} = St,
       #{agent_id := AgentId, reason := Reason} = Attempt) ->
    Failed1 = [Attempt | Failed],
    Next = St#{n := N + 1, tried := [AgentId | Tried], failed := Failed1},
    Retryable = erlmcp_flow_retry:retryable(Reason) andalso maps:get(idempotent, Plan, true),
    #{max_retry_attempts := Max, base_retry_delay := Base, max_retry_delay := Cap} = Plan,
    if
        not Retryable, N =:= 1 ->
            {error, Reason};
        not Retryable ->
            {error, {no_available_agent, lists:reverse(Failed1)}};
        Phase =:= agents, N =< Max ->
            sleep(erlmcp_flow_retry:backoff(N, Base, Cap)),
            attempt(Task, Plan, Ctx, Deadline, Next);
        Phase =:= agents ->
            %% the retries are spent: one attempt on a swarm holding the
            %% capabilities, if an untried one exists
            attempt(Task, Plan, Ctx, Deadline, Next#{phase := fallback});
        true ->
            {error, {no_available_agent, lists:reverse(Failed1)}}
    end.

sleep(0) -> ok;
sleep(Ms) -> receive after Ms -> ok end.

%% A decision for this attempt: agents not tried yet (the same ones again
%% when no other exists), or an untried swarm for the fallback; waiting in
%% the bulkhead line while every candidate is full.
decide_waiting(Task, #{capabilities := Caps} = Plan, Tried, Phase, Deadline) ->
    Decision = case {Phase, decide(Task, Plan, Tried, kind(Phase))} of
                   {agents, {error, no_agents_available}} when Tried =/= [] ->
                       decide(Task, Plan, [], any);
                   {_, D} ->
                       D
               end,
    case Decision of
        {error, overloaded} ->
            case erlmcp_flow_bulkhead:wait(Caps, Deadline) of
                ready -> decide_waiting(Task, Plan, Tried, Phase, Deadline);
                _ -> {error, overloaded}
            end;
        Other ->
            Other
    end.

kind(agents) -> any;
kind(fallback) -> swarm.

decide(Task, #{capabilities := Caps, strategy := Strategy} = Plan, Exclude, Kind) ->
    Class = case Plan of
                #{task_class := C} when is_binary(C) -> C;
                #{task_class := C} -> term_to_binary(C);
                #{} -> undefined
            end,
    case erlmcp_flow_nif:decide(erlmcp_flow_registry:router(), Caps, Strategy,
                                sticky_key(Strategy, Task, Plan), Class, Exclude, Kind) of
        {ok, AgentId, Pid, Lease, Transition} ->
            erlmcp_flow_circuit_breaker:log_transition(AgentId, Transition),
            {ok, AgentId, Pid, Lease};
        Other ->
            Other
    end.

%% Settles a lease: the latency, the breaker transition logged, and the
%% bulkhead line told that a permit freed.
complete(Lease, Outcome, AgentId) ->
    Completed = erlmcp_flow_nif:complete(Lease, Outcome),
    ok = erlmcp_flow_bulkhead:released(),
    case Completed of
        {ok, Latency} ->
            Latency;
        {ok, Latency, Transition} ->
            erlmcp_flow_circuit_breaker:log_transition(AgentId, Transition),
            Latency;
        {error, already_settled} ->
            undefined
    end.

%% The execution timeout of one attempt: the one asked for; else, with
%% `timeouts.adaptive', twice the agent's p95 latency within 1 s..30 s once it
%% has one; else `timeouts.execution'.
attempt_timeout(#{timeout := T}, _AgentId) ->
    T;
attempt_timeout(_Plan, AgentId) ->
    Execution = erlmcp_flow_config:get(timeouts, execution),
    case erlmcp_flow_config:get(timeouts, adaptive) of
        true ->
            case erlmcp_flow_registry:agent_stats(AgentId) of
                {ok, #{p95_us := P95}} when is_integer(P95) ->
                    min(max(2 * P95 div 1000, ?ADAPTIVE_MIN_MS), ?ADAPTIVE_MAX_MS);
                _ ->
                    Execution
            end;
        false ->
            Execution
    end.

%% The key of consistent hashing: the requirement's, else the task's id.
%% Other strategies do not hash, so they are spared the encoding.
sticky_key(consistent_hash, _Task, #{sticky_key := Key}) -> Key;
sticky_key(consistent_hash, #{id := Id}, _Plan) when is_binary(Id) -> Id;
sticky_key(consistent_hash, #{id := Id}, _Plan) -> term_to_binary(Id);
sticky_key(_Strategy, _Task, _Plan) -> undefined.

plan(Task, _Requirements, _Allowed, _Opts) when not is_map(Task) ->
    {error, {badarg, task}};
plan(_Task, Requirements, _Allowed, _Opts) when not is_map(Requirements) ->
    {error, {badarg, requirements}};
plan(_Task, _Requirements, _Allowed, Opts) when not is_map(Opts) ->
    {error, {badarg, opts}};
plan(_Task, Requirements, Allowed, Opts) ->
    Timeouts = erlmcp_flow_config:get(timeouts),
    Defaults = #{capabilities => [],
                 strategy => erlmcp_flow_config:get(load_balancer, strategy),
                 routing_timeout => maps:get(routing, Timeouts),
                 max_retry_attempts => maps:get(max_retry_attempts, Timeouts),
                 base_retry_delay => maps:get(base_retry_delay, Timeouts),
                 max_retry_delay => maps:get(max_retry_delay, Timeouts)},
    case unknown_key(maps:keys(Opts), ?OPT_KEYS) of
        {ok, K} -> {error, {badarg, {unknown_option, K}}};
        none ->
            case unknown_key(maps:keys(Requirements), Allowed) of
                {ok, K} -> {error, {badarg, {unknown_requirement, K}}};
                none -> check_values(maps:to_list(maps:merge(maps:merge(Defaults, Requirements), Opts)))
            end
    end.

unknown_key(Keys, Allowed) ->
    case [K || K <- Keys, not lists:member(K, Allowed)] of
        [] -> none;
        [K | _] -> {ok, K}
    end.

check_values(Pairs) ->
    case [{K, V} || {K, V} <- Pairs, not valid(K, V)] of
        [] -> {ok, maps:from_list(Pairs)};
        [Bad | _] -> {error, {badarg, Bad}}
    end.

valid(capabilities, Caps) -> erlmcp_flow_registry:is_capability_list(Caps);
valid(strategy, S) -> lists:member(S, strategies());
valid(timeout, infinity) -> true;
valid(timeout, T) -> is_integer(T) andalso T > 0;
valid(routing_timeout, T) -> is_integer(T) andalso T > 0;
valid(max_retry_attempts, N) -> is_integer(N) andalso N >= 0;
valid(base_retry_delay, N) -> is_integer(N) andalso N >= 0;
valid(max_retry_delay, N) -> is_integer(N) andalso N >= 0;
valid(reply_to, P) -> is_pid(P);
valid(sticky_key, K) -> is_binary(K);
valid(idempotent, B) -> is_boolean(B);
valid(task_class, _) -> true.
