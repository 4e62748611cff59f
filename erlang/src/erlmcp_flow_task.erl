%% @private
%% @doc The waiter of one task routed with `erlmcp_flow:route_task/2': it
%% dispatches the task, waits for the agent's answer like `execute' does,
%% completes the decision, and hands the answer to `reply_to' if the caller
%% named one: exactly one answer (see run/1).
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
%% The answer goes to `reply_to' exactly once, whatever happens here: the
%% agent answers, fails, dies or times out (the answer `execute' would give
%% for one attempt); an exit signal (the application stopping) ends the wait
%% with `{error, {stopped, Why}}'; a crash of this process's own code is
%% caught and answered `{error, {internal_error, Reason}}'. Only `kill',
%% which no process can catch, leaves `reply_to' without an answer.
-spec run(job()) -> ok.
run(#{context := #{trace_id := TraceId}, reply_to := ReplyTo} = Job) ->
    process_flag(trap_exit, true),
    Answer = try settle(Job)
             catch Class:Reason -> {error, {internal_error, {Class, Reason}}}
             end,
    case ReplyTo of
        undefined -> ok;
        _ -> ReplyTo ! {erlmcp_flow_result, TraceId, Answer}, ok
    end.

settle(#{task := Task, timeout := Timeout, context := Ctx, trace := Trace, agent_id := AgentId,
         pid := Pid, lease := Lease}) ->
    Ref = erlmcp_flow_router:dispatch(Pid, Task, Ctx),
    Answer = case erlmcp_flow_router:await(Ref, Pid, Lease, Timeout, AgentId, true) of
                 {ok, Result, Latency} ->
                     {ok, Result, erlmcp_flow_router:meta(AgentId, Trace, Latency, 1, [])};
                 {error, Reason, _Latency} ->
                     {error, Reason}
             end,
    erlmcp_flow_router:end_trace(Trace, Answer).
