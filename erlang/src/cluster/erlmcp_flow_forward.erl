%% @private
%% @doc The first level of two-level routing (`cluster.mode => summary'):
%% `execute/2,3' picks a node by the summaries its peers publish
%% (erlmcp_flow_cluster_summary), and the node picks the agent among its
%% own, with its own strategies, breakers, bulkheads and learning.
%%
%% A task for this node, or with `node => local', or a quorum task (which
%% asks 2F+1 nodes itself, erlmcp_flow_quorum), goes to the router as in
%% mirror mode. A task for another node is forwarded: this process opens
%% the task's span, monitors the node, spawns a process there
%% (`spawn_request') which runs the task with `node => local' as a child of
%% that span, and waits for its one answer, sent to an alias of this
%% process. So the caller gets exactly one answer:
%% - the answer, once (the alias is dropped after it: a late one is lost);
%% - when the node goes away before answering (`nodedown'), the task is
%%   sent to another node if it is idempotent (the default), else
%%   `{error, {node_down, Node}}';
%% - a node that could not start it (not running erlmcp_flow, draining, gone
%%   before the spawn, or without the agents its summary had) never ran it:
%%   another node is asked;
%% - past a guard of the plan's longest possible run (the other node's
%%   router ends the task well before), `execution_timeout'.
%% At most `max_retry_attempts' + 1 nodes are asked. The answer's `Meta'
%% names the task's span on this node and the `node' that ran it.
%%
%% The node monitor is `erlang:monitor_node/2''s: its `{nodedown, Node}'
%% carries no reference, so when the node goes away in the microseconds
%% between a task's answer and the monitor's removal, the one message taken
%% out of the caller's mailbox may be one of the caller's own node
%% monitors (a process monitor of the remote process would be exact, at two
%% more signals over the link a task).
-module(erlmcp_flow_forward).

-export([execute/3]).
-export([serve/4]).

%% the guard's margin over the plan's longest run (ms)
-define(GUARD_MARGIN_MS, 1000).
%% the adaptive timeout's bound (ms), as the router's
-define(ADAPTIVE_MAX_MS, 30000).

%% @doc Routes `Task' in two levels when this node runs in summary mode and
%% knows other nodes; otherwise as `erlmcp_flow_router:execute/3'.
-spec execute(erlmcp_flow:task(), erlmcp_flow:requirements(), erlmcp_flow:execute_opts()) ->
          erlmcp_flow_router:answer().
execute(Task, Requirements, Opts) ->
    case two_level() andalso plan(Task, Requirements, Opts) of
        {ok, #{node := local} = Plan} ->
            erlmcp_flow_router:execute_plan(Task, Plan, Opts);
        {ok, #{quorum := Q} = Plan} when Q =/= false ->
            erlmcp_flow_router:execute_plan(Task, Plan, Opts);
        {ok, Plan} ->
            choose(Task, Opts, Plan, [], none);
        _ ->
            %% one node, mirror mode, or a bad argument the router names
            erlmcp_flow_router:execute(Task, Requirements, Opts)
    end.

%% The router's plan, unless this node is draining.
plan(Task, Requirements, Opts) ->
    case erlmcp_flow_registry:draining() of
        false -> erlmcp_flow_requirements:plan(Task, Requirements, execute, Opts);
        true -> {error, draining}
    end.

%% Summary mode with a peer's summary in view. The configuration is read
%% first: in mirror mode (the default) a task looks up no table here.
two_level() ->
    erlmcp_flow_config:get(cluster, mode) =:= summary andalso
        length(erlmcp_flow_cluster_summary:members()) > 1.

%% The node for the task (those asked before excluded): this one goes to
%% the router, another is forwarded to. `Trace' is the task's span on this
%% node once a node was asked (`none' before).
choose(Task, Opts, #{capabilities := Caps} = Plan, Asked, Trace) ->
    Key = case Plan of
              #{strategy := consistent_hash, sticky_key := K} -> K;
              #{} -> undefined
          end,
    Me = node(),
    case erlmcp_flow_cluster_summary:choose(lists:usort(Caps), Asked, Key) of
        {ok, Me, _} when Trace =:= none ->
            %% this node's agents (not the others' it mirrors)
            erlmcp_flow_router:execute_plan(Task, Plan#{node => local}, Opts);
        {ok, Me, _} ->
            %% after another node: a child of the task's span here
            ended(Trace, erlmcp_flow_router:execute_plan(Task, Plan#{node => local,
                                                                     traceparent => traceparent(Trace)},
                                                         Opts));
        {ok, Node, Direct} when Trace =:= none ->
            case has_room(Direct) of
                true -> direct(Node, Task, Opts, Plan, Direct, Asked);
                false -> forward_traced(Node, Task, Opts, Plan, Asked)
            end;
        {ok, Node, _} ->
            forward(Node, Task, Opts, Plan, Asked, Trace);
        none when Trace =:= none ->
            %% no node's summary holds them: the router says what it finds
            erlmcp_flow_router:execute_plan(Task, Plan, Opts);
        none ->
            ended(Trace, {error, no_agents_available})
    end.

%% Whether the node named agents for direct routing (`Direct', the
%% capabilities that pick them) and one has room now.
has_room(none) ->
    false;
has_room(Direct) ->
    case erlmcp_flow_registry:router_if_running() of
        undefined -> false;
        Router -> erlmcp_flow_nif:has_capacity(Router, Direct)
    end.

%% The task on one of `Node''s agents this node mirrors, as in mirror mode
%% (its retries among them); when none of them could answer, another node.
direct(Node, Task, Opts, Plan, Direct, Asked) ->
    case erlmcp_flow_router:execute_plan(Task, Plan#{capabilities := Direct}, Opts) of
        {ok, Result, Meta} ->
            {ok, Result, Meta#{node => Node}};
        Error ->
            More = length(Asked) < maps:get(max_retry_attempts, Plan),
            case element(2, Error) of
                no_agents_available when More ->
                    %% they left since the check: nothing ran
                    choose(Task, Opts, Plan, [Node | Asked], none);
                {no_available_agent, _} when More ->
                    case maps:get(idempotent, Plan, true) of
                        true -> choose(Task, Opts, Plan, [Node | Asked], none);
                        false -> Error
                    end;
                _ ->
                    Error
            end
    end.

%% Forwarded, under a span of its own here.
forward_traced(Node, Task, Opts, Plan, Asked) ->
    case erlmcp_flow_router:start_trace(Task, Plan) of
        {ok, Trace} -> forward(Node, Task, Opts, Plan, Asked, Trace);
        {error, _} = E -> E
    end.

%% One node asked: its answer, or the next node's.
forward(Node, Task, Opts, Plan, Asked, Trace) ->
    {Outcome, Answer} = run(Node, Task, Opts, Plan, Trace),
    Again = length(Asked) < maps:get(max_retry_attempts, Plan),
    Next = Again andalso case Outcome of
                            not_run -> true;
                            lost -> maps:get(idempotent, Plan, true);
                            answered -> false
                        end,
    case Next of
        true ->
            choose(Task, Opts, Plan, [Node | Asked], Trace);
        false ->
            ended(Trace, case Answer of
                             {ok, Result, Meta} ->
                                 {ok, Result, Meta#{span_id => maps:get(span_id, Trace), node => Node}};
                             Other ->
                                 Other
                         end)
    end.

%% The task's span here ends with the answer.
ended(Trace, {error, Reason, Meta}) ->
    _ = erlmcp_flow_router:end_trace(Trace, {error, Reason}),
    {error, Reason, Meta};
ended(Trace, Answer) ->
    erlmcp_flow_router:end_trace(Trace, Answer).

traceparent(#{trace_id := T, span_id := S, trace_flags := F}) ->
    erlmcp_flow_nif:format_traceparent(T, S, F).

%% The task on `Node': `{answered | not_run | lost, Answer}'.
run(Node, Task, Opts, Plan, Trace) ->
    Alias = alias([explicit_unalias]),
    %% the plan made here, run there on its own agents
    Remote = Plan#{node => local, traceparent => traceparent(Trace)},
    %% the node, not the process, is watched: a monitor of the remote
    %% process costs a signal over the link when it exits, a node monitor
    %% none; the process itself does not fail to answer (the router never
    %% exits its caller), and the guard covers the rest
    true = erlang:monitor_node(Node, true),
    ReqId = erlang:spawn_request(Node, ?MODULE, serve, [Alias, Task, Remote, Opts],
                                 [{reply, error_only}]),
    ok = erlmcp_flow_registry:remote_task(ReqId, Node),
    try
        wait(ReqId, Alias, Node, guard(Plan))
    after
        _ = unalias(Alias),
        true = erlang:monitor_node(Node, false),
        %% this task's nodedown, come with or after the answer
        receive {nodedown, Node} -> ok after 0 -> ok end,
        erlmcp_flow_registry:remote_task_done(ReqId)
    end.

wait(ReqId, Alias, Node, Guard) ->
    receive
        {spawn_reply, ReqId, error, _Why} ->
            {not_run, {error, {node_down, Node}}};
        {flow_forwarded, Alias, Answer} ->
            %% a node that took no decision (draining, stopped, or its
            %% agents gone since its summary) ran nothing
            case element(2, Answer) of
                Why when Why =:= draining; Why =:= not_started; Why =:= no_agents_available ->
                    {not_run, Answer};
                _ ->
                    {answered, Answer}
            end;
        {nodedown, Node} ->
            {lost, {error, {node_down, Node}}}
    after Guard ->
            {answered, {error, execution_timeout}}
    end.

%% The longest a task of `Plan' may run on the other node: waiting for an
%% agent, and every attempt with its backoff.
guard(#{routing_timeout := RT, max_retry_attempts := Max, max_retry_delay := Delay} = Plan) ->
    case maps:get(timeout, Plan, execution_timeout()) of
        infinity -> infinity;
        T -> RT + (Max + 2) * (T + Delay) + ?GUARD_MARGIN_MS
    end.

execution_timeout() ->
    case erlmcp_flow_config:get(timeouts, adaptive) of
        true -> max(?ADAPTIVE_MAX_MS, erlmcp_flow_config:get(timeouts, execution));
        false -> erlmcp_flow_config:get(timeouts, execution)
    end.

%% @private On the node a task was forwarded to: runs its plan on this
%% node's agents and sends the answer to `Alias'.
-spec serve(reference(), erlmcp_flow:task(), erlmcp_flow_router:plan(),
            erlmcp_flow:execute_opts()) -> ok.
serve(Alias, Task, Plan, Opts) ->
    Alias ! {flow_forwarded, Alias, erlmcp_flow_router:execute_plan(Task, Plan, Opts)},
    ok.
