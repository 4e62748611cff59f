%% @private
%% @doc The waiter of one task routed with `erlmcp_flow:route_task/2': it
%% dispatches the task, waits for the agent's answer like `execute' does,
%% completes the decision, and hands the answer to `reply_to' if the caller
%% named one.
-module(erlmcp_flow_task).

%% API
-export([start_link/1]).

%% proc_lib entry
-export([run/1]).

-export_type([job/0]).

-type job() :: #{task := erlmcp_flow:task(),
                 plan := erlmcp_flow_router:plan(),
                 context := erlmcp_flow_trace:context(),
                 agent_id := erlmcp_flow:agent_id(),
                 pid := pid(),
                 lease := erlmcp_flow_nif:lease()}.

-spec start_link(job()) -> {ok, pid()}.
start_link(Job) ->
    {ok, proc_lib:spawn_link(?MODULE, run, [Job])}.

%% @private
-spec run(job()) -> ok.
run(#{task := Task, plan := Plan, context := Ctx, agent_id := AgentId, pid := Pid,
      lease := Lease}) ->
    Ref = erlmcp_flow_router:dispatch(Pid, Task, Ctx),
    #{trace_id := TraceId} = Ctx,
    Answer = erlmcp_flow_router:await(
               Ref, Pid, Lease, maps:get(timeout, Plan),
               #{agent_id => AgentId, trace_id => TraceId, attempts => 1}),
    case Plan of
        #{reply_to := To} -> To ! {erlmcp_flow_result, TraceId, Answer}, ok;
        #{} -> ok
    end.
