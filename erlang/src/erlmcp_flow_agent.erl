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
%% starts it unregistered, e.g. as a member of a swarm.
%%
%% Callbacks (one of `handle_task/2' and `handle_task/3' is required):
%% <ul>
%% <li>`init(Args) -> {ok, State} | {stop, Reason}'</li>
%% <li>`handle_task(Task, State) -> {ok, Result, State} | {error, Reason, State}':
%%   answered at once.</li>
%% <li>`handle_task(Task, TaskCtx, State)': the same answers, or
%%   `{noreply, State}' to answer later with `reply(TaskCtx, {ok, Result} |
%%   {error, Reason})' (the agent keeps taking tasks meanwhile). `TaskCtx'
%%   carries the task's trace context (`trace') and its reference (`ref').</li>
%% <li>`handle_cancel(Ref, State) -> {ok, State}': the caller stopped waiting
%%   for the task with reference `Ref'. Optional; ignored by default.</li>
%% <li>`handle_info(Msg, State) -> {ok, State}': any other message. Optional.</li>
%% <li>`terminate(Reason, State)'. Optional.</li>
%% </ul>
%% An exception in a callback crashes the agent, as in `gen_server'; the
%% callers of its tasks in flight get `{error, {agent_down, Reason}}'.
%%
%% A registered agent re-registers by itself when the registry restarts.
-module(erlmcp_flow_agent).
-behaviour(gen_server).

%% API
-export([start_link/2]).
-export([start_link/4]).
-export([start/2]).
-export([start/4]).
-export([reply/2]).
-export([stop/1]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-export_type([task_ctx/0]).

-type task_ctx() :: #{trace := erlmcp_flow:trace_context(),
                      ref := reference(),
                      from := pid() | reference()}.

-callback init(Args :: term()) -> {ok, State :: term()} | {stop, Reason :: term()}.
-callback handle_task(Task :: erlmcp_flow:task(), State :: term()) ->
    {ok, Result :: term(), NewState :: term()}
  | {error, Reason :: term(), NewState :: term()}.
-callback handle_task(Task :: erlmcp_flow:task(), task_ctx(), State :: term()) ->
    {ok, Result :: term(), NewState :: term()}
  | {error, Reason :: term(), NewState :: term()}
  | {noreply, NewState :: term()}.
-callback handle_cancel(Ref :: reference(), State :: term()) -> {ok, NewState :: term()}.
-callback handle_info(Msg :: term(), State :: term()) -> {ok, NewState :: term()}.
-callback terminate(Reason :: term(), State :: term()) -> term().
-optional_callbacks([handle_task/2, handle_task/3, handle_cancel/2, handle_info/2,
                     terminate/2]).

-define(REREGISTER_MS, 100).

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
    gen_server:start_link(?MODULE, {Mod, Args, undefined}, []).

%% @doc Starts an agent linked to the caller and registers it as `AgentId'
%% with `Capabilities'; fails if the registration does.
-spec start_link(erlmcp_flow:agent_id(), [erlmcp_flow:capability()], module(), term()) ->
          {ok, pid()} | {error, term()}.
start_link(AgentId, Capabilities, Mod, Args) ->
    gen_server:start_link(?MODULE, {Mod, Args, {AgentId, Capabilities}}, []).

%% @doc As `start_link/2', unlinked.
-spec start(module(), term()) -> {ok, pid()} | {error, term()}.
start(Mod, Args) ->
    gen_server:start(?MODULE, {Mod, Args, undefined}, []).

%% @doc As `start_link/4', unlinked.
-spec start(erlmcp_flow:agent_id(), [erlmcp_flow:capability()], module(), term()) ->
          {ok, pid()} | {error, term()}.
start(AgentId, Capabilities, Mod, Args) ->
    gen_server:start(?MODULE, {Mod, Args, {AgentId, Capabilities}}, []).

%% @doc Answers a task that `handle_task/3' left with `{noreply, State}'.
-spec reply(task_ctx(), {ok, term()} | {error, term()}) -> ok.
reply(#{from := From, ref := Ref}, Result) ->
    From ! {task_result, Ref, Result},
    ok.

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
    NewMS = case Reply of
                {ok, Result, MS1} -> reply(Ctx, {ok, Result}), MS1;
                {error, Reason, MS1} -> reply(Ctx, {error, Reason}), MS1;
                {noreply, MS1} -> MS1
            end,
    {noreply, State#state{mstate = NewMS}};
handle_info({cancel_task, Ref}, #state{mod = Mod, mstate = MS} = State) ->
    case erlang:function_exported(Mod, handle_cancel, 2) of
        true ->
            {ok, MS1} = Mod:handle_cancel(Ref, MS),
            {noreply, State#state{mstate = MS1}};
        false ->
            {noreply, State}
    end;
handle_info({'DOWN', MRef, process, _, _}, #state{registry_mon = MRef} = State) ->
    erlang:send_after(?REREGISTER_MS, self(), reregister),
    {noreply, State#state{registry_mon = undefined}};
handle_info(reregister, State) ->
    case register_self(State) of
        {ok, State1} ->
            {noreply, State1};
        {error, registry_not_running} ->
            erlang:send_after(?REREGISTER_MS, self(), reregister),
            {noreply, State};
        {error, Reason} ->
            {stop, {shutdown, {reregistration_failed, Reason}}, State}
    end;
handle_info(Msg, #state{mod = Mod, mstate = MS} = State) ->
    case erlang:function_exported(Mod, handle_info, 2) of
        true ->
            {ok, MS1} = Mod:handle_info(Msg, MS),
            {noreply, State#state{mstate = MS1}};
        false ->
            {noreply, State}
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
    case whereis(erlmcp_flow_registry) of
        undefined ->
            {error, registry_not_running};
        Registry ->
            MRef = erlang:monitor(process, Registry),
            try erlmcp_flow:register_agent(Id, self(), Caps) of
                ok ->
                    ok = (erlmcp_flow_registry:backend()):register_capabilities(Caps),
                    {ok, State#state{registry_mon = MRef}};
                {error, _} = E ->
                    erlang:demonitor(MRef, [flush]),
                    E
            catch
                exit:_ ->
                    erlang:demonitor(MRef, [flush]),
                    {error, registry_not_running}
            end
    end.
