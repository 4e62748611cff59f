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
%% death) the alias is deactivated, so a late answer is dropped by the runtime,
%% and answers that arrived before that (an agent answering twice) are taken
%% out of the mailbox: nothing of a task is left in the caller's mailbox once
%% it has its answer.
-module(erlmcp_flow_router).

%% API
-export([execute/3]).
-export([execute_plan/3]).
-export([route_task/2]).
-export([dispatch/4]).
-export([settle/1]).
-export([internal_error/4]).
-export([task_stopped/2]).
-export([await/7]).
-export([start_trace/2]).
-export([end_trace/2]).
-export([end_trace/3]).
-export([meta/5]).
-export([in_flight_to/1]).

-export_type([plan/0, answer/0, settled/0, attempt/0, trace/0, error_meta/0, started/0]).

-type plan() :: erlmcp_flow_requirements:plan().
%% When a task started and its telemetry metadata, or `off' when telemetry
%% was not loaded then (no event for it).
-type started() :: {integer(), map()} | off.
%% The task's span: its ids, the flags and tracestate passed on to agents.
%% `span' ends it; if the process holding it dies first, the span closes as
%% `abandoned' when the garbage collector frees it.
-type trace() :: #{trace_id := binary(), span_id := binary(), trace_flags := 0..255,
                   span := erlmcp_flow_nif:task_span(),
                   tracestate => binary()}.
-type answer() :: {ok, term(), erlmcp_flow:meta()} | {error, term()}
                | {error, term(), error_meta()}.
%% How a task ended inside the router, before `answer/3' shapes it for the
%% caller: a failed task with its failed attempts, oldest first.
-type settled() :: {ok, term(), erlmcp_flow:meta()} | {error, term()}
                 | {error, term(), [attempt()]}.
%% With `error_meta => true': the task's trace and its failed attempts; empty
%% when the error came before the task's span began (a bad argument).
-type error_meta() :: #{trace_id => binary(), span_id => binary(),
                        attempts => non_neg_integer(), tried => [attempt()]}.
%% One failed attempt, as reported in `Meta' and in `no_available_agent'.
-type attempt() :: #{agent_id := erlmcp_flow:agent_id(), reason := term(),
                     latency_us := non_neg_integer() | undefined}.

%% The attempt number a span records saturates here (a 16-bit field).
-define(MAX_ATTEMPT_NO, 65535).
%% A span's summary holds at most this much of the task's type and of its id.
-define(SUMMARY_PART_BYTES, 64).

%% Adaptive timeouts: twice the agent's p95 latency, within these bounds (ms).
-define(ADAPTIVE_MIN_MS, 1000).
-define(ADAPTIVE_MAX_MS, 30000).

%% @doc Routes `Task' to an agent meeting `Requirements' and waits for its
%% answer, retrying and falling back as the module doc says.
-spec execute(erlmcp_flow:task(), erlmcp_flow:requirements(), erlmcp_flow:execute_opts()) ->
          answer().
execute(Task, Requirements, Opts) ->
    case plan(Task, Requirements, execute, Opts) of
        {ok, Plan} -> run(Task, Plan, Opts);
        {error, _} = E -> answer(E, none, Opts)
    end.

%% @doc As `execute/3', with the task's plan made already
%% (`erlmcp_flow_requirements:plan/4'): a task another node forwarded.
-spec execute_plan(erlmcp_flow:task(), plan(), erlmcp_flow:execute_opts()) -> answer().
execute_plan(Task, Plan, Opts) ->
    case erlmcp_flow_registry:draining() of
        false -> run(Task, Plan, Opts);
        true -> answer({error, draining}, none, Opts)
    end.

run(Task, #{routing_timeout := RT} = Plan, Opts) ->
            case start_task(Task, Plan) of
                {ok, Trace, First} ->
                    Deadline = erlang:monotonic_time(millisecond) + RT,
                    Started = task_started(Plan, Trace),
                    St = #{n => 1, tried => [], failed => [], phase => agents, first => First},
                    Answer = try quorum_or_attempt(Task, Plan, Trace, Deadline, St) of
                                 A -> A
                             catch
                                 Class:Reason:Stack ->
                                     internal_error(Started, Class, Reason, Stack)
                             end,
                    task_stopped(Started, Answer),
                    answer(end_trace(Trace, Answer, span_ended(Plan, Answer)), Trace, Opts);
                {error, _} = E ->
                    answer(E, none, Opts)
            end.

%% The task's plan, unless this node is draining (it takes no new task).
plan(Task, Requirements, Mode, Opts) ->
    case erlmcp_flow_registry:draining() of
        false -> erlmcp_flow_requirements:plan(Task, Requirements, Mode, Opts);
        true -> {error, draining}
    end.

%% The task's span and, unless it is a quorum task, its first decision,
%% in one NIF call: `{ok, Trace, FirstDecision | none}'.
start_task(Task, Plan) ->
    case quorum(Plan) of
        true ->
            case start_trace(Task, Plan) of
                {ok, Trace} -> {ok, Trace, none};
                {error, _} = E -> E
            end;
        false ->
            case erlmcp_flow_registry:router_if_running() of
                undefined ->
                    {error, not_started};
                Router ->
                    TP = maps:get(traceparent, Plan, undefined),
                    {Caps, Strategy, Key, Class, Exclude, Where} = decide_args(Plan, [], any),
                    case erlmcp_flow_nif:task_start(Router, TP, summary(Task), Caps, Strategy, Key,
                                                    Class, Exclude, Where) of
                        {ok, TraceId, SpanId, Flags, Span, First} ->
                            {ok, trace(Plan, TraceId, SpanId, Flags, Span), First};
                        {error, invalid_trace_context} ->
                            {error, {badarg, {traceparent, TP}}}
                    end
            end
    end.

quorum(Plan) ->
    maps:get(quorum, Plan, false) =/= false.

%% Whether the answer's attempt closed the task's span when it settled its
%% lease (`erlmcp_flow_nif:task_complete/2'): every answer of an agent but
%% a quorum's.
span_ended(Plan, {ok, _, _}) -> not quorum(Plan);
span_ended(_Plan, _Answer) -> false.

%% A quorum task goes to 2F+1 agents (erlmcp_flow_quorum); any other to
%% one at a time.
quorum_or_attempt(Task, #{quorum := Q} = Plan, Trace, _Deadline, _St) when Q =/= false ->
    erlmcp_flow_quorum:execute(Task, Plan, Trace);
quorum_or_attempt(Task, Plan, Trace, Deadline, St) ->
    attempt(Task, Plan, Trace, Deadline, St).

%% What execute/3 returns: {error, Reason, Meta} with `error_meta => true'
%% (Meta empty when the task's span never began), else as is.
answer({error, Reason, Failed}, Trace, #{error_meta := true}) ->
    {error, Reason, error_meta(Trace, Failed)};
answer({error, Reason, _Failed}, _Trace, _Opts) ->
    {error, Reason};
answer({error, Reason}, Trace, #{error_meta := true}) ->
    {error, Reason, error_meta(Trace, [])};
answer(Answer, _Trace, _Opts) ->
    Answer.

error_meta(none, _Failed) ->
    #{};
error_meta(#{trace_id := TraceId, span_id := SpanId}, Failed) ->
    #{trace_id => TraceId, span_id => SpanId, attempts => length(Failed), tried => Failed}.

%% Telemetry: the task's start, with what its stop and exception reuse;
%% `off' (nothing read, nothing built) while telemetry is not loaded.
task_started(#{strategy := Strategy, capabilities := Caps}, #{trace_id := TraceId}) ->
    case erlmcp_flow_telemetry:enabled() of
        true ->
            Meta = #{trace_id => TraceId, strategy => Strategy, capabilities => Caps},
            T0 = erlang:monotonic_time(),
            erlmcp_flow_telemetry:execute([task, start],
                                          #{monotonic_time => T0,
                                            system_time => erlang:system_time()},
                                          Meta),
            {T0, Meta};
        false ->
            off
    end.

%% @doc The `[erlmcp_flow, task, stop]' event of a task that began with
%% `Started' (none when telemetry was not loaded then).
-spec task_stopped(started(), settled()) -> ok.
task_stopped(off, _Answer) ->
    ok;
task_stopped({T0, Meta}, Answer) ->
    Now = erlang:monotonic_time(),
    {Kind, Agent, Error, Attempts} = outcome(Answer),
    Outcome = #{outcome => case Kind of failed -> error; _ -> Kind end, agent_id => Agent,
                attempts => Attempts},
    erlmcp_flow_telemetry:execute([task, stop], #{monotonic_time => Now, duration => Now - T0},
                                  maps:merge(Meta, case Kind of
                                                       ok -> Outcome;
                                                       _ -> Outcome#{error => Error}
                                                   end)).

%% How a task ended, for its span, its counters and its stop event: `ok',
%% `rejected' (the agent refused it as the caller's error: that agent named)
%% or `failed'; the agent that answered, the error, and the attempts made.
outcome({ok, _, #{agent_id := A, attempts := N}}) ->
    {ok, A, none, N};
outcome({error, {rejected, _} = Reason, [_ | _] = Failed}) ->
    {rejected, maps:get(agent_id, lists:last(Failed)), Reason, length(Failed)};
outcome({error, Reason, Failed}) ->
    {failed, undefined, Reason, length(Failed)};
outcome({error, Reason}) ->
    {failed, undefined, Reason, 0}.

%% @doc A crash inside erlmcp_flow while routing (a defect, never the
%% agent's): reported as the `[erlmcp_flow, task, exception]' event and a
%% log line; the answer is an error rather than an exception at the caller.
-spec internal_error(started(), error | exit | throw, term(), list()) ->
          {error, {internal_error, {error | exit | throw, term()}}}.
internal_error(Started, Class, Reason, Stack) ->
    case Started of
        {T0, Meta} ->
            Now = erlang:monotonic_time(),
            erlmcp_flow_telemetry:execute([task, exception],
                                          #{monotonic_time => Now, duration => Now - T0},
                                          Meta#{kind => Class, reason => Reason,
                                                stacktrace => Stack});
        off ->
            ok
    end,
    logger:error("erlmcp_flow: internal error while routing a task: ~p:~p~n~p",
                 [Class, Reason, Stack]),
    {error, {internal_error, {Class, Reason}}}.

%% @doc Routes `Task' and returns once it is dispatched; a supervised process
%% waits for the answer, completes the decision and, when the requirements
%% name `reply_to', sends it `{erlmcp_flow_result, TraceId, Answer}'. One
%% attempt: no retry, no waiting for a full bulkhead (`{error, overloaded}').
%% Returns the trace context the agent received.
-spec route_task(erlmcp_flow:task(), erlmcp_flow:requirements()) ->
          {ok, erlmcp_flow:agent_id(), erlmcp_flow_correlation_tracker:context()}
        | {error, term()}.
route_task(Task, Requirements) ->
    case plan(Task, Requirements, route, #{}) of
        {ok, Plan} ->
            case start_task(Task, Plan) of
                {ok, Trace, First} ->
                    Started = task_started(Plan, Trace),
                    case first_decision(First, Plan, Trace) of
                        {ok, AgentId, Pid, Lease, Ctx} ->
                            Job = #{task => Task, timeout => attempt_timeout(Plan, Lease),
                                    context => Ctx, trace => Trace, agent_id => AgentId,
                                    pid => Pid, lease => Lease, started => Started,
                                    reply_to => maps:get(reply_to, Plan, undefined)},
                            case erlmcp_flow_task_sup:start_task(Job) of
                                {ok, _} ->
                                    {ok, AgentId, Ctx};
                                {error, _} ->
                                    %% the application stops: the decision is
                                    %% given back, nothing was sent
                                    _ = complete(Lease, abandoned, AgentId),
                                    E = {error, not_started},
                                    task_stopped(Started, E),
                                    end_trace(Trace, E)
                            end;
                        {error, Reason} = E ->
                            Reason =:= overloaded andalso erlmcp_flow_metrics:incr(overloaded),
                            task_stopped(Started, E),
                            end_trace(Trace, E)
                    end;
                {error, _} = E ->
                    E
            end;
        {error, _} = E ->
            E
    end.

%% @doc The one attempt of a routed task, in its waiter (`erlmcp_flow_task'):
%% dispatched, awaited (an exit signal trapped by the waiter ends the wait),
%% settled, reported and its span closed. Returns the task's answer.
-spec settle(erlmcp_flow_task:job()) -> answer().
settle(#{task := Task, timeout := Timeout, context := Ctx, trace := Trace, agent_id := AgentId,
         pid := Pid, lease := Lease, started := Started}) ->
    T0 = attempt_started(),
    Ref = dispatch(Pid, Task, Ctx, AgentId),
    Awaited = await(Ref, Pid, Lease, Timeout, AgentId, true, maps:get(span, Trace)),
    attempt_stopped(T0, Trace, Ctx, AgentId, 1, Awaited),
    Answer = case Awaited of
                 {ok, Result, Latency} -> {ok, Result, meta(AgentId, Trace, Latency, 1, [])};
                 {error, Reason, Latency} ->
                     {error, Reason, [#{agent_id => AgentId, reason => Reason,
                                        latency_us => Latency}]}
             end,
    task_stopped(Started, Answer),
    case end_trace(Trace, Answer, element(1, Answer) =:= ok) of
        {error, Why, _} -> {error, Why};
        Other -> Other
    end.

%% @doc Sends the task to `Pid' under a fresh alias monitor; returns the
%% alias. The context the agent gets also names the id it was routed under
%% (`agent_id'): a process registered under several ids can tell which.
-spec dispatch(pid(), erlmcp_flow:task(), erlmcp_flow_correlation_tracker:context(),
               erlmcp_flow:agent_id()) -> reference().
dispatch(Pid, Task, Ctx, AgentId) ->
    Ref = erlang:monitor(process, Pid, [{alias, demonitor}]),
    _ = node(Pid) =:= node() orelse erlmcp_flow_registry:remote_task(Ref, node(Pid)),
    Pid ! {execute_task, Task, Ctx#{agent_id => AgentId}, Ref, Ref},
    Ref.

%% @doc The tasks this node's callers are waiting for on `Node''s agents (a
%% draining node waits for them to reach none).
-spec in_flight_to(node()) -> non_neg_integer().
in_flight_to(Node) ->
    erlmcp_flow_registry:remote_tasks(Node).

%% @doc Waits for the answer of a dispatched task and settles its lease:
%% `{ok, Result, LatencyUs}' or `{error, Reason, LatencyUs}'. An `ok'
%% answer also ends the task's span `TaskSpan', in the same NIF call that
%% settles the lease (`erlmcp_flow_nif:task_complete/2'). With
%% `Interruptible' true, an exit signal trapped by the waiting process
%% (`{'EXIT', From, Why}') also ends the wait: the agent is sent
%% `{cancel_task, Ref}', the lease settles as abandoned, and the result is
%% `{error, {stopped, Why}, LatencyUs}'.
-spec await(reference(), pid(), erlmcp_flow_nif:lease(), timeout(), erlmcp_flow:agent_id(),
            boolean(), erlmcp_flow_nif:task_span()) ->
          {ok, term(), non_neg_integer() | undefined}
        | {error, term(), non_neg_integer() | undefined}.
await(Ref, Pid, Lease, Timeout, AgentId, Interruptible, TaskSpan) ->
    receive
        {task_result, Ref, Result} ->
            forget(Ref, Pid),
            case Result of
                {ok, Value} -> {ok, Value, succeeded(Lease, AgentId, TaskSpan)};
                {error, Reason} -> {error, {agent_error, Reason}, complete(Lease, error, AgentId)};
                {reject, Reason} -> {error, {rejected, Reason}, complete(Lease, rejected, AgentId)};
                Other -> {error, {bad_agent_reply, Other}, complete(Lease, error, AgentId)}
            end;
        {'DOWN', Ref, process, _, Reason} ->
            %% an answer sent by another process on the agent's behalf (a
            %% swarm member) may still be here
            flush_answers(Ref),
            untrack(Ref, Pid),
            {error, {agent_down, Reason}, complete(Lease, down, AgentId)};
        {'EXIT', _From, Why} when Interruptible ->
            forget(Ref, Pid),
            Pid ! {cancel_task, Ref},
            {error, {stopped, Why}, complete(Lease, abandoned, AgentId)}
    after Timeout ->
        forget(Ref, Pid),
        Pid ! {cancel_task, Ref},
        {error, execution_timeout, complete(Lease, timeout, AgentId)}
    end.

%% Ends the monitor, which deactivates the alias: no answer can arrive after
%% this. Those that arrived before (an agent answering twice) are dropped.
forget(Ref, Pid) ->
    erlang:demonitor(Ref, [flush]),
    flush_answers(Ref),
    untrack(Ref, Pid).

untrack(_Ref, Pid) when node(Pid) =:= node() -> ok;
untrack(Ref, _Pid) -> erlmcp_flow_registry:remote_task_done(Ref).

flush_answers(Ref) ->
    receive
        {task_result, Ref, _} -> flush_answers(Ref)
    after 0 ->
        ok
    end.

%%====================================================================
%% Internal functions
%%====================================================================

%% An attempt, and those after it; an error comes with the failed attempts
%% (oldest first), which execute/3 reports with `error_meta'.
attempt(Task, Plan, Trace, Deadline, #{n := N, tried := Tried, phase := Phase} = St) ->
    Decision = case St of
                   #{first := First} when First =/= none ->
                       first_decision(First, Plan, Trace, Deadline);
                   #{} ->
                       decide_waiting(Plan, Trace, N, Tried, Phase, Deadline)
               end,
    case Decision of
        {ok, AgentId, Pid, Lease, Ctx} ->
            count_attempt(N, Phase),
            T0 = attempt_started(),
            Ref = dispatch(Pid, Task, Ctx, AgentId),
            Awaited = await(Ref, Pid, Lease, attempt_timeout(Plan, Lease), AgentId,
                            maps:get(cancellable, Plan, false), maps:get(span, Trace)),
            attempt_stopped(T0, Trace, Ctx, AgentId, N, Awaited),
            case Awaited of
                {ok, Result, Latency} ->
                    {ok, Result, meta(AgentId, Trace, Latency, N,
                                      lists:reverse(maps:get(failed, St)))};
                {error, Reason, Latency} ->
                    failed(Task, Plan, Trace, Deadline, St,
                           #{agent_id => AgentId, reason => Reason, latency_us => Latency})
            end;
        {error, no_agents_available} when N > 1 ->
            Failed = lists:reverse(maps:get(failed, St)),
            {error, {no_available_agent, Failed}, Failed};
        {error, overloaded} ->
            erlmcp_flow_metrics:incr(overloaded),
            {error, overloaded, lists:reverse(maps:get(failed, St))};
        {error, Reason} ->
            {error, Reason, lists:reverse(maps:get(failed, St))}
    end.

%% When an attempt began, for its `[erlmcp_flow, attempt, stop]' event;
%% `off' while telemetry is not loaded.
attempt_started() ->
    case erlmcp_flow_telemetry:enabled() of
        true -> erlang:monotonic_time();
        false -> off
    end.

attempt_stopped(off, _Trace, _Ctx, _AgentId, _N, _Awaited) ->
    ok;
attempt_stopped(T0, #{trace_id := TraceId}, #{span_id := SpanId}, AgentId, N, Awaited) ->
    Now = erlang:monotonic_time(),
    Outcome = case Awaited of
                  {ok, _, _} -> #{outcome => ok};
                  {error, {rejected, _} = Reason, _} -> #{outcome => rejected, error => Reason};
                  {error, Reason, _} -> #{outcome => error, error => Reason}
              end,
    erlmcp_flow_telemetry:execute([attempt, stop], #{monotonic_time => Now, duration => Now - T0},
                                  Outcome#{trace_id => TraceId, span_id => SpanId,
                                           agent_id => AgentId, attempt => N}).

count_attempt(1, agents) -> ok;
count_attempt(_, agents) -> erlmcp_flow_metrics:incr(retries);
count_attempt(_, fallback) -> erlmcp_flow_metrics:incr(fallbacks).

failed(Task, Plan, Trace, Deadline,
       #{n := N, tried := Tried, failed := Failed, phase := Phase} = St,
       #{agent_id := AgentId, reason := Reason} = Attempt) ->
    Failed1 = [Attempt | Failed],
    Next = St#{n := N + 1, tried := [AgentId | Tried], failed := Failed1, first => none},
    Retryable = erlmcp_flow_retry:retryable(Reason) andalso maps:get(idempotent, Plan, true),
    #{max_retry_attempts := Max, base_retry_delay := Base, max_retry_delay := Cap} = Plan,
    if
        not Retryable, N =:= 1 ->
            {error, Reason, lists:reverse(Failed1)};
        element(1, Reason) =:= rejected ->
            %% the agent refused the task as the caller's error: its own
            %% answer, whatever the attempts before it
            {error, Reason, lists:reverse(Failed1)};
        not Retryable ->
            {error, {no_available_agent, lists:reverse(Failed1)}, lists:reverse(Failed1)};
        Phase =:= agents, N =< Max ->
            sleep(erlmcp_flow_retry:backoff(N, Base, Cap)),
            attempt(Task, Plan, Trace, Deadline, Next);
        Phase =:= agents ->
            %% the retries are spent: one attempt on a swarm holding the
            %% capabilities, if an untried one exists
            attempt(Task, Plan, Trace, Deadline, Next#{phase := fallback});
        true ->
            {error, {no_available_agent, lists:reverse(Failed1)}, lists:reverse(Failed1)}
    end.

sleep(0) -> ok;
sleep(Ms) -> receive after Ms -> ok end.

%% A decision for this attempt: agents not tried yet (the same ones again
%% when no other exists), or an untried swarm for the fallback; waiting in
%% the bulkhead line while every candidate is full.
decide_waiting(Plan, Trace, N, Tried, Phase, Deadline) ->
    Kind = kind(Phase),
    {Passed, Decision} = case {Phase, decide(Plan, Trace, N, Tried, Kind)} of
                             {agents, {error, no_agents_available}} when Tried =/= [] ->
                                 {[], decide(Plan, Trace, N, [], any)};
                             {_, D} ->
                                 {Tried, D}
                         end,
    case Decision of
        {error, overloaded} ->
            case wait_in_line(Plan, Passed, Kind, Deadline) of
                ready -> decide_waiting(Plan, Trace, N, Tried, Phase, Deadline);
                _ -> {error, overloaded}
            end;
        Other ->
            Other
    end.

%% Waits in the bulkhead line until the decision that found every
%% candidate full (passing `Exclude' by, of `Kind') may find room: an agent
%% it passes by getting room does not wake it.
wait_in_line(#{capabilities := Caps} = Plan, Exclude, Kind, Deadline) ->
    {_, _, _, _, Excluded, Where} = decide_args(Plan, Exclude, Kind),
    erlmcp_flow_bulkhead:wait(Caps, Excluded, Where, Deadline).

kind(agents) -> any;
kind(fallback) -> swarm.

%% The first attempt's decision, made with the task's span
%% (`start_task/2'); waiting in the bulkhead line, then deciding again, when
%% every candidate was full.
first_decision(First, Plan, Trace, Deadline) ->
    case first_decision(First, Plan, Trace) of
        {error, overloaded} ->
            case wait_in_line(Plan, [], any, Deadline) of
                ready -> decide_waiting(Plan, Trace, 1, [], agents, Deadline);
                _ -> {error, overloaded}
            end;
        Other ->
            Other
    end.

%% A routed task's one decision: no waiting for a full bulkhead. The first
%% task routed by key made none: the ring is built and the decision made.
first_decision({error, ring_not_built}, Plan, Trace) ->
    decide(Plan, Trace, 1, [], any);
first_decision(First, _Plan, Trace) ->
    decided(First, Trace).

%% One decision: the agent, its lease, and the context of the attempt's span
%% (opened by the decision as a child of the task's span).
decide(Plan, #{span := TaskSpan} = Trace, N, Exclude, Kind) ->
    {Caps, Strategy, Key, Class, Excluded, Where} = decide_args(Plan, Exclude, Kind),
    Span = {TaskSpan, min(N, ?MAX_ATTEMPT_NO)},
    decided(decide_nif(Caps, Strategy, Key, Class, Excluded, Where, Span), Trace).

%% What a decision asks the core: the capabilities, strategy, sticky key,
%% task class, agents passed by and which agents (swarms, this node's).
decide_args(#{capabilities := Caps, strategy := Strategy} = Plan, Exclude, Kind) ->
    Where = case Plan of
                #{node := local} -> {Kind, local};
                #{} -> Kind
            end,
    %% blacklisted agents (quorum voting) are passed by as tried ones are
    Excluded = case erlmcp_flow_byzantine_detector:excluded() of
                   [] -> Exclude;
                   Black -> Black ++ Exclude
               end,
    {Caps, Strategy, maps:get(sticky_key, Plan, undefined), maps:get(task_class, Plan, undefined),
     Excluded, Where}.

decided({ok, AgentId, Pid, Lease, SpanId, Transition}, Trace) ->
    erlmcp_flow_circuit_breaker:log_transition(AgentId, Transition),
    {ok, AgentId, Pid, Lease, agent_context(Trace, SpanId)};
decided(Other, _Trace) ->
    Other.

%% The decision, on the running registry's router (which may have restarted
%% since the task began: a retry then goes to the new one's agents).
%% The first decision by key builds the consistent-hash ring (on a dirty
%% scheduler; a router that never routes by key holds none).
decide_nif(Caps, Strategy, Key, Class, Exclude, Kind, Span) ->
    case erlmcp_flow_registry:router_if_running() of
        undefined ->
            {error, not_started};
        Router ->
            case erlmcp_flow_nif:decide(Router, Caps, Strategy, Key, Class, Exclude, Kind, Span) of
                {error, ring_not_built} ->
                    ok = erlmcp_flow_nif:ring_build(Router),
                    erlmcp_flow_nif:decide(Router, Caps, Strategy, Key, Class, Exclude, Kind, Span);
                Decision ->
                    Decision
            end
    end.

agent_context(#{trace_id := T, span_id := Parent, trace_flags := F} = Trace, SpanId) ->
    Ctx = #{trace_id => T, span_id => SpanId, parent_span_id => Parent, trace_flags => F},
    case Trace of
        #{tracestate := TS} -> Ctx#{tracestate => TS};
        #{} -> Ctx
    end.

%% @doc The task's span: a child of the caller's `traceparent' when given,
%% else the root of a new trace.
-spec start_trace(erlmcp_flow:task(), plan()) -> {ok, trace()} | {error, term()}.
start_trace(Task, Plan) ->
    TP = maps:get(traceparent, Plan, undefined),
    case span_start(TP, summary(Task)) of
        {ok, TraceId, SpanId, Flags, Span} ->
            {ok, trace(Plan, TraceId, SpanId, Flags, Span)};
        {error, invalid_trace_context} ->
            {error, {badarg, {traceparent, TP}}};
        {error, not_started} = E ->
            E
    end.

trace(Plan, TraceId, SpanId, Flags, Span) ->
    Trace = #{trace_id => TraceId, span_id => SpanId, trace_flags => Flags, span => Span},
    case Plan of
        #{tracestate := TS} -> Trace#{tracestate => TS};
        #{} -> Trace
    end.

span_start(TP, Summary) ->
    case erlmcp_flow_registry:router_if_running() of
        undefined -> {error, not_started};
        Router -> erlmcp_flow_nif:span_start(Router, TP, Summary)
    end.

%% @doc The `Meta' of a task answered by `AgentId' on attempt `N', after the
%% failed attempts `Tried'.
-spec meta(erlmcp_flow:agent_id(), trace(), non_neg_integer() | undefined, pos_integer(),
           [attempt()]) -> erlmcp_flow:meta().
meta(AgentId, #{trace_id := TraceId, span_id := SpanId}, Latency, N, Tried) ->
    #{agent_id => AgentId, trace_id => TraceId, span_id => SpanId, latency_us => Latency,
      attempts => N, tried => Tried}.

%% @doc Closes the task's span with the task's outcome; returns the answer.
-spec end_trace(trace(), Answer) -> Answer when Answer :: settled().
end_trace(Trace, Answer) ->
    end_trace(Trace, Answer, false).

%% @doc As `end_trace/2'; `true' when the span was closed already (by the
%% attempt that answered, see `await/7'): the outcome is counted, the span
%% left as it is.
-spec end_trace(trace(), Answer, boolean()) -> Answer when Answer :: settled().
end_trace(_Trace, {ok, _, _} = Answer, true) ->
    erlmcp_flow_metrics:incr(tasks_succeeded),
    Answer;
end_trace(Trace, Answer, _Ended) ->
    {Outcome, Agent, _, _} = outcome(Answer),
    erlmcp_flow_metrics:incr(case Outcome of
                                 ok -> tasks_succeeded;
                                 rejected -> tasks_rejected;
                                 failed -> tasks_failed
                             end),
    _ = erlmcp_flow_nif:span_end(maps:get(span, Trace), Outcome, Agent),
    Answer.

%% What a span says the task was: its `type' and `id' when they are short
%% atoms, binaries or integers.
summary(Task) ->
    case {summary_part(maps:get(type, Task, undefined)),
          summary_part(maps:get(id, Task, undefined))} of
        {<<>>, Id} -> Id;
        {Type, <<>>} -> Type;
        {Type, Id} -> <<Type/binary, " ", Id/binary>>
    end.

summary_part(undefined) -> <<>>;
summary_part(B) when is_binary(B), byte_size(B) =< ?SUMMARY_PART_BYTES -> B;
summary_part(B) when is_binary(B) -> binary:part(B, 0, ?SUMMARY_PART_BYTES);
summary_part(A) when is_atom(A) -> summary_part(atom_to_binary(A));
summary_part(I) when is_integer(I) -> integer_to_binary(I);
summary_part(_) -> <<>>.

%% Settles a lease: the latency, the breaker transition logged, and the
%% bulkhead line told that a permit freed.
complete(Lease, Outcome, AgentId) ->
    settled(erlmcp_flow_nif:complete(Lease, Outcome), AgentId).

%% Settles the lease of an attempt answered `ok', and ends the task's span
%% with it.
succeeded(Lease, AgentId, TaskSpan) ->
    settled(erlmcp_flow_nif:task_complete(Lease, TaskSpan), AgentId).

settled(Completed, AgentId) ->
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
attempt_timeout(#{timeout := T}, _Lease) ->
    T;
attempt_timeout(_Plan, Lease) ->
    Execution = erlmcp_flow_config:get(timeouts, execution),
    case erlmcp_flow_config:get(timeouts, adaptive) of
        true ->
            %% the lease's agent, read through the lease: no lookup, no map
            case erlmcp_flow_nif:lease_p95(Lease) of
                P95 when is_integer(P95) ->
                    min(max(2 * P95 div 1000, ?ADAPTIVE_MIN_MS), ?ADAPTIVE_MAX_MS);
                _ ->
                    Execution
            end;
        false ->
            Execution
    end.
