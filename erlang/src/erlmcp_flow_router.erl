%% @private
%% @doc The path of one task, run in the caller's process: trace context,
%% decision (one NIF call that filters by capability, picks an agent with the
%% strategy and takes a lease on it), dispatch, wait, completion (one NIF call
%% that settles the lease). No server sits on this path.
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

-export_type([plan/0, answer/0]).

-type plan() :: #{capabilities := [erlmcp_flow:capability()],
                  strategy := erlmcp_flow:strategy(),
                  timeout := timeout(),
                  sticky_key => binary(),
                  task_class => term(),
                  reply_to => pid()}.
-type answer() :: {ok, term(), erlmcp_flow:meta()} | {error, term()}.

-define(EXECUTE_KEYS, [capabilities, timeout, strategy, sticky_key, task_class]).
-define(ROUTE_KEYS, [reply_to | ?EXECUTE_KEYS]).

%% @doc The strategies this build implements.
-spec strategies() -> [erlmcp_flow:strategy(), ...].
strategies() ->
    [round_robin, least_connections, weighted, consistent_hash, p2c_ewma, q_learning].

%% @doc Routes `Task' to an agent meeting `Requirements' and waits for its answer.
-spec execute(erlmcp_flow:task(), erlmcp_flow:requirements(), erlmcp_flow:execute_opts()) ->
          answer().
execute(Task, Requirements, Opts) ->
    case plan(Task, Requirements, ?EXECUTE_KEYS, Opts) of
        {ok, Plan} -> run(Task, Plan);
        {error, _} = E -> E
    end.

%% @doc Routes `Task' and returns once it is dispatched; a supervised process
%% waits for the answer, completes the decision and, when the requirements
%% name `reply_to', sends it `{erlmcp_flow_result, TraceId, Answer}'.
-spec route_task(erlmcp_flow:task(), erlmcp_flow:requirements()) ->
          {ok, erlmcp_flow:agent_id(), erlmcp_flow_trace:context()} | {error, term()}.
route_task(Task, Requirements) ->
    case plan(Task, Requirements, ?ROUTE_KEYS, #{}) of
        {ok, Plan} ->
            Ctx = erlmcp_flow_trace:new_context(),
            case decide(Task, Plan) of
                {ok, AgentId, Pid, Lease} ->
                    Job = #{task => Task, plan => Plan, context => Ctx, agent_id => AgentId,
                            pid => Pid, lease => Lease},
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

%% @doc Waits for the answer of a dispatched task, settles its lease and
%% returns the one answer of the task.
-spec await(reference(), pid(), erlmcp_flow_nif:lease(), timeout(), map()) -> answer().
await(Ref, Pid, Lease, Timeout, Meta) ->
    receive
        {task_result, Ref, Result} ->
            erlang:demonitor(Ref, [flush]),
            settle(Result, Lease, Meta);
        {'DOWN', Ref, process, _, Reason} ->
            _ = erlmcp_flow_nif:complete(Lease, down),
            {error, {agent_down, Reason}}
    after Timeout ->
        erlang:demonitor(Ref, [flush]),
        %% The alias is inactive now; an answer sent just before is the only
        %% one that can still be here.
        receive {task_result, Ref, _} -> ok after 0 -> ok end,
        Pid ! {cancel_task, Ref},
        _ = erlmcp_flow_nif:complete(Lease, timeout),
        {error, execution_timeout}
    end.

%%====================================================================
%% Internal functions
%%====================================================================

run(Task, #{timeout := Timeout} = Plan) ->
    Ctx = erlmcp_flow_trace:new_context(),
    case decide(Task, Plan) of
        {ok, AgentId, Pid, Lease} ->
            Ref = dispatch(Pid, Task, Ctx),
            await(Ref, Pid, Lease, Timeout,
                  #{agent_id => AgentId, trace_id => maps:get(trace_id, Ctx), attempts => 1});
        {error, _} = E ->
            E
    end.

decide(Task, #{capabilities := Caps, strategy := Strategy} = Plan) ->
    Class = case Plan of
                #{task_class := C} when is_binary(C) -> C;
                #{task_class := C} -> term_to_binary(C);
                #{} -> undefined
            end,
    erlmcp_flow_nif:decide(erlmcp_flow_registry:router(), Caps, Strategy,
                           sticky_key(Strategy, Task, Plan), Class).

%% The key of consistent hashing: the requirement's, else the task's id.
%% Other strategies do not hash, so they are spared the encoding.
sticky_key(consistent_hash, _Task, #{sticky_key := Key}) -> Key;
sticky_key(consistent_hash, #{id := Id}, _Plan) when is_binary(Id) -> Id;
sticky_key(consistent_hash, #{id := Id}, _Plan) -> term_to_binary(Id);
sticky_key(_Strategy, _Task, _Plan) -> undefined.

settle({ok, Result}, Lease, Meta) ->
    {ok, Latency} = erlmcp_flow_nif:complete(Lease, ok),
    {ok, Result, Meta#{latency_us => Latency}};
settle({error, Reason}, Lease, _Meta) ->
    _ = erlmcp_flow_nif:complete(Lease, error),
    {error, {agent_error, Reason}};
settle(Other, Lease, _Meta) ->
    _ = erlmcp_flow_nif:complete(Lease, error),
    {error, {bad_agent_reply, Other}}.

plan(Task, _Requirements, _Allowed, _Opts) when not is_map(Task) ->
    {error, {badarg, task}};
plan(_Task, Requirements, _Allowed, _Opts) when not is_map(Requirements) ->
    {error, {badarg, requirements}};
plan(_Task, _Requirements, _Allowed, Opts) when not is_map(Opts) ->
    {error, {badarg, opts}};
plan(_Task, Requirements, Allowed, Opts) ->
    Defaults = #{capabilities => [],
                 strategy => erlmcp_flow_config:get(load_balancer, strategy),
                 timeout => erlmcp_flow_config:get(timeouts, execution)},
    case unknown_key(maps:keys(Opts), [timeout]) of
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
valid(reply_to, P) -> is_pid(P);
valid(sticky_key, K) -> is_binary(K);
valid(task_class, _) -> true.
