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
                 %% when the task started, and its telemetry metadata
                 started := erlmcp_flow_router:started(),
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
run(#{context := #{trace_id := TraceId}, reply_to := ReplyTo, started := Started} = Job) ->
    process_flag(trap_exit, true),
    Answer = try erlmcp_flow_router:settle(Job)
             catch
                 Class:Reason:Stack ->
                     Error = erlmcp_flow_router:internal_error(Started, Class, Reason, Stack),
                     erlmcp_flow_router:task_stopped(Started, Error),
                     Error
             end,
    case ReplyTo of
        undefined -> ok;
        _ -> ReplyTo ! {erlmcp_flow_result, TraceId, Answer}, ok
    end.
