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
                 timeout := timeout(),
                 context := erlmcp_flow_correlation_tracker:context(),
                 trace := erlmcp_flow_router:trace(),
                 agent_id := erlmcp_flow:agent_id(),
                 pid := pid(),
                 lease := erlmcp_flow_nif:lease(),
                 reply_to := pid() | undefined}.

-spec start_link(job()) -> {ok, pid()}.
start_link(Job) ->
    {ok, proc_lib:spawn_link(?MODULE, run, [Job])}.

%% @private
-spec run(job()) -> ok.
run(#{task := Task, timeout := Timeout, context := Ctx, trace := Trace, agent_id := AgentId,
      pid := Pid, lease := Lease, reply_to := ReplyTo}) ->
    Ref = erlmcp_flow_router:dispatch(Pid, Task, Ctx),
    #{trace_id := TraceId} = Ctx,
    Answer = case erlmcp_flow_router:await(Ref, Pid, Lease, Timeout, AgentId) of
                 {ok, Result, Latency} ->
                     {ok, Result, erlmcp_flow_router:meta(AgentId, Trace, Latency, 1, [])};
                 {error, Reason, _Latency} ->
                     {error, Reason}
             end,
    _ = erlmcp_flow_router:end_trace(Trace, Answer),
    case ReplyTo of
        undefined -> ok;
        _ -> ReplyTo ! {erlmcp_flow_result, TraceId, Answer}, ok
    end.
