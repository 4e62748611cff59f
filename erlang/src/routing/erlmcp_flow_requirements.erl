%% @private
%% @doc What a task's `Requirements' and `Opts' may say, checked before
%% anything is scanned or waited for: the known keys, each value, the limits
%% on sizes and times, and the defaults from the configuration. The result is
%% a plan the router follows (`erlmcp_flow_router') and that `explain/1'
%% reads. One module owns the rules so that `execute/2,3', `route_task/2',
%% `explain/1' and the transports refuse the same things in the same words.
-module(erlmcp_flow_requirements).

%% API
-export([plan/4]).
-export([check/1]).
-export([strategies/0]).
-export([limits/0]).
-export([class_key/1]).

-export_type([plan/0, kind/0]).

-type plan() :: #{capabilities := [erlmcp_flow:capability()],
                  strategy := erlmcp_flow:strategy(),
                  timeout => timeout(),
                  routing_timeout := pos_integer(),
                  max_retry_attempts := non_neg_integer(),
                  base_retry_delay := non_neg_integer(),
                  max_retry_delay := non_neg_integer(),
                  sticky_key => binary(),
                  %% encoded once by class_key/1
                  task_class => binary(),
                  idempotent => boolean(),
                  reply_to => pid(),
                  traceparent => binary(),
                  tracestate => binary(),
                  node => local | any,
                  quorum => boolean() | non_neg_integer(),
                  on_no_quorum => best_effort | error,
                  error_meta => boolean(),
                  cancellable => boolean()}.
%% `execute' for `execute/2,3' (quorum keys allowed), `route' for
%% `route_task/2' (`reply_to' allowed, no quorum).
-type kind() :: execute | route.

-define(EXECUTE_KEYS, [capabilities, timeout, strategy, sticky_key, task_class, idempotent,
                       traceparent, tracestate, node, quorum, on_no_quorum]).
-define(ROUTE_KEYS, [reply_to | ?EXECUTE_KEYS -- [quorum, on_no_quorum]]).
-define(OPT_KEYS, [timeout, routing_timeout, max_retry_attempts, base_retry_delay,
                   max_retry_delay, error_meta, cancellable]).

%% Limits on what requirements and options may give (see limits/0).
-define(MAX_RETRIES, 100).
-define(MAX_KEY_BYTES, 65536).
-define(MAX_TRACEPARENT_BYTES, 512).
-define(MAX_TRACESTATE_BYTES, 32768).

%% @doc The strategies this build implements.
-spec strategies() -> [erlmcp_flow:strategy(), ...].
strategies() ->
    erlmcp_flow_config:strategies().

%% @doc The plan of a task: `Requirements' and `Opts' checked, the
%% configuration's defaults filled in, or the error the caller gets.
-spec plan(term(), term(), kind(), term()) -> {ok, plan()} | {error, {badarg, term()}}.
plan(Task, Requirements, execute, Opts) ->
    plan1(Task, Requirements, ?EXECUTE_KEYS, Opts);
plan(Task, Requirements, route, Opts) ->
    plan1(Task, Requirements, ?ROUTE_KEYS, Opts).

%% @doc Checks `Requirements' as `execute/2' does, without routing: the
%% plan (defaults filled in, `task_class' as the key Q-learning hashes), or
%% the error `execute/2' would answer.
-spec check(term()) -> {ok, plan()} | {error, {badarg, term()}}.
check(Requirements) ->
    plan(#{}, Requirements, execute, #{}).

%% @doc The limits requirements and options are checked against:
%% milliseconds (every time), retries, and the bytes of sticky keys, task
%% classes and trace headers.
-spec limits() -> #{atom() => pos_integer()}.
limits() ->
    #{max_ms => erlmcp_flow_config:max_ms(), max_retry_attempts => ?MAX_RETRIES,
      max_key_bytes => ?MAX_KEY_BYTES,
      max_traceparent_bytes => ?MAX_TRACEPARENT_BYTES,
      max_tracestate_bytes => ?MAX_TRACESTATE_BYTES}.

%%====================================================================
%% Internal functions
%%====================================================================

%% The key of consistent hashing: the requirement's, else the task's id.
%% Other strategies do not hash, so they are spared the encoding.
with_sticky_key(#{strategy := consistent_hash, sticky_key := _} = Plan, _Task) -> Plan;
with_sticky_key(#{strategy := consistent_hash} = Plan, #{id := Id}) when is_binary(Id) ->
    Plan#{sticky_key => Id};
with_sticky_key(#{strategy := consistent_hash} = Plan, #{id := Id}) ->
    Plan#{sticky_key => term_to_binary(Id)};
with_sticky_key(Plan, _Task) -> maps:remove(sticky_key, Plan).

%% @doc The key Q-learning tells task classes apart by: the requirements'
%% `task_class' as a binary (another term is encoded), or `undefined'.
-spec class_key(map()) -> binary() | undefined.
class_key(#{task_class := C}) when is_binary(C) -> C;
class_key(#{task_class := C}) -> term_to_binary(C);
class_key(#{}) -> undefined.

%% `byzantine.enabled' makes a quorum the default of every task that may
%% have one (not a routed task: one attempt on one agent).
with_quorum(Plan, Allowed) ->
    case lists:member(quorum, Allowed) of
        true -> with_quorum(Plan);
        false -> Plan
    end.

with_quorum(#{quorum := _} = Plan) -> Plan;
with_quorum(Plan) ->
    case erlmcp_flow_config:get(byzantine, enabled) of
        true -> Plan#{quorum => true};
        false -> Plan
    end.

with_class_key(#{task_class := _} = Plan) -> Plan#{task_class := class_key(Plan)};
with_class_key(Plan) -> Plan.

plan1(Task, _Requirements, _Allowed, _Opts) when not is_map(Task) ->
    {error, {badarg, task}};
plan1(_Task, Requirements, _Allowed, _Opts) when not is_map(Requirements) ->
    {error, {badarg, requirements}};
plan1(_Task, _Requirements, _Allowed, Opts) when not is_map(Opts) ->
    {error, {badarg, opts}};
plan1(Task, #{capabilities := Caps} = Requirements, Allowed, Opts)
  when map_size(Requirements) =:= 1, map_size(Opts) =:= 0 ->
    %% the common case, capabilities alone: the same checks and plan as
    %% below, without walking keys that are not there
    case check(capabilities, Caps) of
        ok -> check_keys(with_sticky_key(with_quorum((defaults())#{capabilities => Caps}, Allowed),
                                         Task));
        {error, Why} -> {error, {badarg, Why}}
    end;
plan1(Task, Requirements, Allowed, Opts) ->
    Defaults = defaults(),
    case unknown_key(maps:keys(Opts), ?OPT_KEYS) of
        {ok, K} -> {error, {badarg, {unknown_option, K}}};
        none ->
            case unknown_key(maps:keys(Requirements), Allowed) of
                {ok, K} -> {error, {badarg, {unknown_requirement, K}}};
                none ->
                    %% only what the caller gave is checked: the defaults come
                    %% from the configuration, checked when it was loaded
                    Given = maps:merge(Requirements, Opts),
                    case check_values(maps:to_list(Given)) of
                        {ok, _} ->
                            Plan = with_quorum(maps:merge(Defaults, Given), Allowed),
                            check_keys(with_class_key(with_sticky_key(Plan, Task)));
                        {error, _} = E ->
                            E
                    end
            end
    end.

%% What the configuration gives a task that says nothing else.
defaults() ->
    Timeouts = erlmcp_flow_config:get(timeouts),
    #{capabilities => [],
      strategy => erlmcp_flow_config:get(load_balancer, strategy),
      routing_timeout => maps:get(routing, Timeouts),
      max_retry_attempts => maps:get(max_retry_attempts, Timeouts),
      base_retry_delay => maps:get(base_retry_delay, Timeouts),
      max_retry_delay => maps:get(max_retry_delay, Timeouts)}.

%% The encoded keys are hashed by the core: bounded like given ones.
check_keys(Plan) ->
    case [K || K <- [sticky_key, task_class],
               byte_size(maps:get(K, Plan, <<>>)) > ?MAX_KEY_BYTES] of
        [] -> {ok, Plan};
        [K | _] -> {error, {badarg, {K, too_long}}}
    end.

%% With several bad keys the smallest is named, whatever order the map
%% iterates in (OTP 26 changed it for atom keys).
unknown_key(Keys, Allowed) ->
    case [K || K <- Keys, not lists:member(K, Allowed)] of
        [] -> none;
        Unknown -> {ok, lists:min(Unknown)}
    end.

check_values(Pairs) ->
    case [Why || {K, V} <- Pairs, {error, Why} <- [check(K, V)]] of
        [] -> {ok, maps:from_list(Pairs)};
        Bad -> {error, {badarg, lists:min(Bad)}}
    end.

%% {Key, Value} when valid, else the reason: `{Key, Value}', or `{Key,
%% too_long}' for a header or key past its limit (refused before any scan).
check(tracestate, TS) when is_binary(TS), byte_size(TS) > ?MAX_TRACESTATE_BYTES ->
    {error, {tracestate, too_long}};
check(traceparent, TP) when is_binary(TP), byte_size(TP) > ?MAX_TRACEPARENT_BYTES ->
    {error, {traceparent, too_long}};
check(sticky_key, K) when is_binary(K), byte_size(K) > ?MAX_KEY_BYTES ->
    {error, {sticky_key, too_long}};
check(task_class, C) when is_binary(C), byte_size(C) > ?MAX_KEY_BYTES ->
    {error, {task_class, too_long}};
check(capabilities, Caps) ->
    %% bounded as a registration's: no agent could hold more or longer ones
    case erlmcp_flow_registry:is_capability_list(Caps) of
        true -> erlmcp_flow_registry:capability_limits(Caps);
        false -> {error, {capabilities, Caps}}
    end;
check(K, V) ->
    case valid(K, V) of
        true -> ok;
        false -> {error, {K, V}}
    end.

valid(strategy, S) -> lists:member(S, strategies());
valid(timeout, infinity) -> true;
valid(timeout, T) -> is_ms(T, 1);
valid(routing_timeout, T) -> is_ms(T, 1);
valid(max_retry_attempts, N) -> is_integer(N) andalso N >= 0 andalso N =< ?MAX_RETRIES;
valid(base_retry_delay, N) -> is_ms(N, 0);
valid(max_retry_delay, N) -> is_ms(N, 0);
valid(reply_to, P) -> is_pid(P);
valid(sticky_key, K) -> is_binary(K);
valid(idempotent, B) -> is_boolean(B);
valid(node, N) -> N =:= local orelse N =:= any;
valid(quorum, Q) -> is_boolean(Q) orelse (is_integer(Q) andalso Q >= 0 andalso Q =< 1000);
valid(on_no_quorum, M) -> M =:= best_effort orelse M =:= error;
valid(error_meta, B) -> is_boolean(B);
valid(cancellable, B) -> is_boolean(B);
valid(task_class, _) -> true;
%% parsed when the task's span starts
valid(traceparent, TP) -> is_binary(TP);
valid(tracestate, TS) -> erlmcp_flow_nif:validate_tracestate(TS) =:= ok.

is_ms(T, Min) -> is_integer(T) andalso T >= Min andalso T =< erlmcp_flow_config:max_ms().
