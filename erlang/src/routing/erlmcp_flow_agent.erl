%% @doc A behaviour for agents: a process that answers the agent protocol by
%% calling `handle_task/2' for each task.
%%
%% ```
%% -module(echo_agent).
%% -behaviour(erlmcp_flow_agent).
%% -export([init/1, handle_task/2]).
%%
%% init(Args) -> {ok, Args}.
%% handle_task(#{input := X}, State) -> {ok, X, State}.
%% '''
%%
%% `erlmcp_flow_agent:start_link(<<"echo-1">>, [<<"echo">>], echo_agent, Args)'
%% starts it and registers it with erlmcp_flow; `start_link(echo_agent, Args)'
%% starts it unregistered, e.g. as a member of a swarm. An agent idle for a
%% second hibernates (`hibernate_after', see `start_opts()'). Under a
%% supervisor of your own, use `child_spec/1':
%%
%% ```
%% Children = [erlmcp_flow_agent:child_spec(#{agent_id => <<"echo-1">>,
%%                                            capabilities => [<<"echo">>],
%%                                            module => echo_agent, args => []})]
%% '''
%%
%% Callbacks (one of `handle_task/2' and `handle_task/3' is required):
%% <ul>
%% <li>`init(Args) -> {ok, State} | {stop, Reason}'</li>
%% <li>`handle_task(Task, State) -> {ok, Result, State} | {error, Reason, State}
%%   | {reject, Reason, State} | {stop, Reason, State}': answered at once; the
%%   caller gets `{ok, Result}', or `{error, {agent_error, Reason}}' for a
%%   failure of the agent (retried elsewhere when the task is idempotent,
%%   counted by its breaker and learned as its fault), or `{error, {rejected,
%%   Reason}}' for a task the agent refuses as the caller's error (bad
%%   arguments, a request it will never serve): answered as is, never
%%   retried, never counted by the breaker, learned as an answer (its latency
%%   counts). `{stop, Reason, State}' answers nothing and stops the agent (its
%%   callers get `{agent_down, Reason}').</li>
%% <li>`handle_task(Task, TaskCtx, State)': the same answers, or
%%   `{noreply, State}' to answer later with `reply(TaskCtx, Answer)', from
%%   this process or any other (the agent keeps taking tasks meanwhile).</li>
%% <li>`handle_cancel(Ref, State) -> {ok, State} | {noreply, State} |
%%   {stop, Reason, State}': the caller stopped waiting for the task with
%%   reference `Ref'. Optional; ignored by default.</li>
%% <li>`handle_info(Msg, State) -> {noreply, State} | {ok, State} |
%%   {stop, Reason, State}': any other message. Optional; ignored by
%%   default.</li>
%% <li>`terminate(Reason, State)': its return value is ignored. Optional.</li>
%% </ul>
%% A callback that returns anything else stops the agent with reason
%% `{bad_return_value, Value}', as `gen_server' does: the callers of its
%% tasks in flight get `{agent_down, {bad_return_value, Value}}' (and their
%% retries go to other agents). An exception in a callback crashes the agent
%% the same way, with the exception's reason and stack trace.
%%
%% `TaskCtx' is `#{trace := TraceCtx, ref := Ref, from := From}': `TraceCtx' is
%% the attempt's trace context (see `erlmcp_flow_correlation_tracker'); pass
%% the trace on to a further task with `#{traceparent =>
%% erlmcp_flow_correlation_tracker:format_traceparent(TraceCtx)}' in its
%% requirements.
%%
%% A registered agent re-registers by itself when the registry restarts.
-module(erlmcp_flow_agent).
-behaviour(gen_server).

%% API
-export([start_link/2]).
-export([start_link/3]).
-export([start_link/4]).
-export([start_link/5]).
-export([start/2]).
-export([start/4]).
-export([start/5]).
-export([reply/2]).
-export([stop/1]).
-export([child_spec/1]).
-export([start_span/2]).
-export([end_span/2]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-export_type([task_ctx/0, child_opts/0, start_opts/0]).

%% An agent that has taken no message for this long hibernates (gen_server's
%% `hibernate_after'): an idle agent keeps only its live data, so a node of
%% many mostly idle agents holds about 1.5 KB less each (see docs/figures.md).
-define(HIBERNATE_AFTER_MS, 1000).

-type task_ctx() :: #{trace := erlmcp_flow:trace_context(),
                      ref := reference(),
                      from := pid() | reference()}.

-callback init(Args :: term()) -> {ok, State :: term()} | {stop, Reason :: term()}.
-type child_opts() :: #{module := module(),
                        args => term(),
                        agent_id => erlmcp_flow:agent_id(),
                        capabilities => [erlmcp_flow:capability(), ...],
                        id => term(),
                        restart => permanent | transient | temporary,
                        shutdown => brutal_kill | timeout(),
                        hibernate_after => timeout()}.
%% `hibernate_after': the idle time (ms) after which the agent hibernates,
%% default 1000; `infinity' never (an agent whose state is large, for which
%% the full collection of each hibernation costs more than the memory it
%% gives back).
-type start_opts() :: #{hibernate_after => timeout()}.

-callback handle_task(Task :: erlmcp_flow:task(), State :: term()) ->
    {ok, Result :: term(), NewState :: term()}
  | {error, Reason :: term(), NewState :: term()}
  | {reject, Reason :: term(), NewState :: term()}
  | {stop, Reason :: term(), NewState :: term()}.
-callback handle_task(Task :: erlmcp_flow:task(), task_ctx(), State :: term()) ->
    {ok, Result :: term(), NewState :: term()}
  | {error, Reason :: term(), NewState :: term()}
  | {reject, Reason :: term(), NewState :: term()}
  | {noreply, NewState :: term()}
  | {stop, Reason :: term(), NewState :: term()}.
-callback handle_cancel(Ref :: reference(), State :: term()) ->
    {ok, NewState :: term()} | {noreply, NewState :: term()}
  | {stop, Reason :: term(), NewState :: term()}.
-callback handle_info(Msg :: term(), State :: term()) ->
    {noreply, NewState :: term()} | {ok, NewState :: term()}
  | {stop, Reason :: term(), NewState :: term()}.
-callback terminate(Reason :: term(), State :: term()) -> term().
-optional_callbacks([handle_task/2, handle_task/3, handle_cancel/2, handle_info/2,
                     terminate/2]).

-record(state, {
    mod :: module(),
    mstate :: term(),
    arity :: 2 | 3,
    registration :: undefined | {erlmcp_flow:agent_id(), [erlmcp_flow:capability()]},
    registry_mon :: undefined | reference()
}).

%%====================================================================
%% API
%%====================================================================

%% @doc Starts an unregistered agent linked to the caller.
-spec start_link(module(), term()) -> {ok, pid()} | {error, term()}.
start_link(Mod, Args) ->
    start_link(Mod, Args, #{}).

%% @doc As `start_link/2', with `Opts' (`start_opts()').
-spec start_link(module(), term(), start_opts()) -> {ok, pid()} | {error, term()}.
start_link(Mod, Args, Opts) ->
    gen_server:start_link(?MODULE, {Mod, Args, undefined}, server_opts(Opts)).

%% @doc Starts an agent linked to the caller and registers it as `AgentId'
%% with `Capabilities'; fails if the registration does.
-spec start_link(erlmcp_flow:agent_id(), [erlmcp_flow:capability()], module(), term()) ->
          {ok, pid()} | {error, term()}.
start_link(AgentId, Capabilities, Mod, Args) ->
    start_link(AgentId, Capabilities, Mod, Args, #{}).

%% @doc As `start_link/4', with `Opts' (`start_opts()').
-spec start_link(erlmcp_flow:agent_id(), [erlmcp_flow:capability()], module(), term(),
                 start_opts()) -> {ok, pid()} | {error, term()}.
start_link(AgentId, Capabilities, Mod, Args, Opts) ->
    gen_server:start_link(?MODULE, {Mod, Args, {AgentId, Capabilities}}, server_opts(Opts)).

%% @doc As `start_link/2', unlinked.
-spec start(module(), term()) -> {ok, pid()} | {error, term()}.
start(Mod, Args) ->
    gen_server:start(?MODULE, {Mod, Args, undefined}, server_opts(#{})).

%% @doc As `start_link/4', unlinked.
-spec start(erlmcp_flow:agent_id(), [erlmcp_flow:capability()], module(), term()) ->
          {ok, pid()} | {error, term()}.
start(AgentId, Capabilities, Mod, Args) ->
    start(AgentId, Capabilities, Mod, Args, #{}).

%% @doc As `start_link/5', unlinked.
-spec start(erlmcp_flow:agent_id(), [erlmcp_flow:capability()], module(), term(),
            start_opts()) -> {ok, pid()} | {error, term()}.
start(AgentId, Capabilities, Mod, Args, Opts) ->
    gen_server:start(?MODULE, {Mod, Args, {AgentId, Capabilities}}, server_opts(Opts)).

%% The start options as the start function's last argument, when any.
opts_arg(Opts) when map_size(Opts) =:= 0 -> [];
opts_arg(Opts) -> [Opts].

%% gen_server's options for `Opts'; a bad one raises `{badarg, {Key, Value}}'.
server_opts(Opts) when is_map(Opts) ->
    case maps:to_list(maps:remove(hibernate_after, Opts)) of
        [] -> ok;
        [{K, _} | _] -> erlang:error({badarg, {unknown_option, K}})
    end,
    case maps:get(hibernate_after, Opts, ?HIBERNATE_AFTER_MS) of
        infinity -> [];
        Ms when is_integer(Ms), Ms >= 0 -> [{hibernate_after, Ms}];
        Bad -> erlang:error({badarg, {hibernate_after, Bad}})
    end;
server_opts(Opts) ->
    erlang:error({badarg, {opts, Opts}}).

%% @doc Answers a task that `handle_task/3' left with `{noreply, State}'.
%% `Answer' is what `handle_task' returns without its state: `{ok, Result}',
%% `{error, Reason}' or `{reject, Reason}'. Any other term `T' is a bare
%% result, as `Result' is in `{ok, Result, State}': the caller gets `{ok, T}'
%% (so a result that is itself one of those must be wrapped: `{ok, {error,
%% x}}').
-spec reply(task_ctx(), term()) -> ok | {error, {badarg, task_ctx}}.
reply(#{from := From, ref := Ref}, Answer) when (is_pid(From) orelse is_reference(From)),
                                                is_reference(Ref) ->
    From ! {task_result, Ref, answer(Answer)},
    ok;
reply(_, _) ->
    {error, {badarg, task_ctx}}.

answer({ok, _} = A) -> A;
answer({error, _} = A) -> A;
answer({reject, _} = A) -> A;
answer(Result) -> {ok, Result}.

%% @doc Opens a span for a call the agent makes while working on the task
%% of `TaskCtx', under the task's attempt: see
%% `erlmcp_flow_correlation_tracker:start_span/2'. Send
%% `erlmcp_flow_correlation_tracker:format_traceparent(ChildCtx)' with the
%% call and close the span with `end_span/2'.
-spec start_span(task_ctx(), binary()) ->
          erlmcp_flow_correlation_tracker:context()
        | {error, not_started | {badarg, trace_context | name}}.
start_span(TaskCtx, Name) ->
    erlmcp_flow_correlation_tracker:start_span(TaskCtx, Name).

%% @doc Closes a span `start_span/2' opened, with the call's outcome.
-spec end_span(erlmcp_flow_correlation_tracker:context(), ok | error) ->
          ok | {error, already_ended | {badarg, span | outcome}}.
end_span(ChildCtx, Outcome) ->
    erlmcp_flow_correlation_tracker:end_span(ChildCtx, Outcome).

%% @doc A child specification for a supervisor of your own, from
%% `#{module := Mod, args => Args, agent_id => Id, capabilities => Caps}':
%% the agent `start_link/4' starts (registered as `Id') or, without
%% `agent_id', the unregistered one `start_link/2' starts. `id' (default
%% `{erlmcp_flow_agent, AgentId}', or `Mod' unregistered), `restart' (default
%% `permanent') and `shutdown' (default 5000) are the child spec's own;
%% `hibernate_after' is passed to the start function (`start_link/3,5').
%% Bad options raise `{badarg, {Key, Value}}' or `{badarg, {missing, Key}}'
%% here, as a bad child spec would in the supervisor.
-spec child_spec(child_opts()) -> supervisor:child_spec().
child_spec(#{module := Mod} = Opts) when is_atom(Mod) ->
    Known = [module, args, agent_id, capabilities, id, restart, shutdown, hibernate_after],
    case lists:sort(maps:keys(Opts)) -- Known of
        [] -> ok;
        [Unknown | _] -> erlang:error({badarg, {unknown_option, Unknown}})
    end,
    Args = maps:get(args, Opts, []),
    StartOpts = maps:with([hibernate_after], Opts),
    _ = server_opts(StartOpts),
    {Start, DefaultId} =
        case Opts of
            #{agent_id := Id, capabilities := Caps} ->
                {{?MODULE, start_link, [Id, Caps, Mod, Args | opts_arg(StartOpts)]},
                 {?MODULE, Id}};
            #{agent_id := _} ->
                erlang:error({badarg, {missing, capabilities}});
            #{capabilities := _} ->
                erlang:error({badarg, {missing, agent_id}});
            #{} ->
                {{?MODULE, start_link, [Mod, Args | opts_arg(StartOpts)]}, Mod}
        end,
    #{id => maps:get(id, Opts, DefaultId),
      start => Start,
      restart => maps:get(restart, Opts, permanent),
      shutdown => maps:get(shutdown, Opts, 5000),
      type => worker,
      modules => [?MODULE, Mod]};
child_spec(#{module := Mod}) ->
    erlang:error({badarg, {module, Mod}});
child_spec(Opts) when is_map(Opts) ->
    erlang:error({badarg, {missing, module}});
child_spec(Opts) ->
    erlang:error({badarg, {opts, Opts}}).

%% @doc Stops the agent; its registration goes with it.
-spec stop(pid()) -> ok.
stop(Agent) ->
    gen_server:stop(Agent).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init({module(), term(), undefined | {erlmcp_flow:agent_id(), [erlmcp_flow:capability()]}}) ->
          {ok, #state{}} | {stop, term()}.
init({Mod, Args, Registration}) ->
    case handle_task_arity(Mod) of
        undefined ->
            {stop, {no_handle_task, Mod}};
        Arity ->
            case Mod:init(Args) of
                {ok, MState} ->
                    State = #state{mod = Mod, mstate = MState, arity = Arity,
                                   registration = Registration},
                    case register_self(State) of
                        {ok, State1} -> {ok, State1};
                        {error, Reason} -> {stop, Reason}
                    end;
                {stop, Reason} ->
                    {stop, Reason}
            end
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, {error, unknown_call}, #state{}}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
handle_info({execute_task, Task, Trace, From, Ref}, #state{mod = Mod, mstate = MS} = State) ->
    Ctx = #{trace => Trace, ref => Ref, from => From},
    Reply = case State#state.arity of
                2 -> Mod:handle_task(Task, MS);
                3 -> Mod:handle_task(Task, Ctx, MS)
            end,
    case Reply of
        {ok, Result, MS1} ->
            send(Ctx, {ok, Result}),
            {noreply, State#state{mstate = MS1}};
        {error, Reason, MS1} ->
            send(Ctx, {error, Reason}),
            {noreply, State#state{mstate = MS1}};
        {reject, Reason, MS1} ->
            send(Ctx, {reject, Reason}),
            {noreply, State#state{mstate = MS1}};
        {noreply, MS1} when State#state.arity =:= 3 ->
            {noreply, State#state{mstate = MS1}};
        {stop, Reason, MS1} ->
            {stop, Reason, State#state{mstate = MS1}};
        Other ->
            {stop, {bad_return_value, Other}, State}
    end;
handle_info({cancel_task, Ref}, #state{mod = Mod, mstate = MS} = State) ->
    case erlang:function_exported(Mod, handle_cancel, 2) of
        true -> callback_return(Mod:handle_cancel(Ref, MS), State);
        false -> {noreply, State}
    end;
handle_info({'DOWN', MRef, process, _, _}, #state{registry_mon = MRef} = State) ->
    ok = erlmcp_flow_registration:registry_down(),
    {noreply, State#state{registry_mon = undefined}};
handle_info(reregister, #state{registration = {Id, Caps}} = State) ->
    case erlmcp_flow_registration:reregister(agent, Id, Caps) of
        {ok, MRef} -> {noreply, State#state{registry_mon = MRef}};
        later -> {noreply, State};
        {error, Reason} -> {stop, {shutdown, {reregistration_failed, Reason}}, State}
    end;
handle_info(Msg, #state{mod = Mod, mstate = MS} = State) ->
    case erlang:function_exported(Mod, handle_info, 2) of
        true -> callback_return(Mod:handle_info(Msg, MS), State);
        false -> {noreply, State}
    end.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(Reason, #state{mod = Mod, mstate = MS}) ->
    case erlang:function_exported(Mod, terminate, 2) of
        true -> _ = Mod:terminate(Reason, MS), ok;
        false -> ok
    end.

%%====================================================================
%% Internal functions
%%====================================================================

send(#{from := From, ref := Ref}, Answer) ->
    From ! {task_result, Ref, Answer},
    ok.

%% What handle_cancel/2 and handle_info/2 may return.
callback_return({noreply, MS}, State) -> {noreply, State#state{mstate = MS}};
callback_return({ok, MS}, State) -> {noreply, State#state{mstate = MS}};
callback_return({stop, Reason, MS}, State) -> {stop, Reason, State#state{mstate = MS}};
callback_return(Other, State) -> {stop, {bad_return_value, Other}, State}.

handle_task_arity(Mod) ->
    _ = code:ensure_loaded(Mod),
    case {erlang:function_exported(Mod, handle_task, 3),
          erlang:function_exported(Mod, handle_task, 2)} of
        {true, _} -> 3;
        {false, true} -> 2;
        {false, false} -> undefined
    end.

register_self(#state{registration = undefined} = State) ->
    {ok, State};
register_self(#state{registration = {Id, Caps}} = State) ->
    case erlmcp_flow_registration:register(agent, Id, Caps) of
        {ok, MRef} -> {ok, State#state{registry_mon = MRef}};
        {error, _} = E -> E
    end.
