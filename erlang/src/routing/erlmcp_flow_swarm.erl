%% @doc A ready swarm coordinator: registers itself as a swarm with
%% erlmcp_flow and answers the agent protocol for its members by forwarding
%% each task to the member with the fewest tasks in flight.
%%
%% Members are any processes speaking the agent protocol (for example
%% unregistered `erlmcp_flow_agent' processes). The coordinator monitors
%% them: a member that dies is dropped and each of its tasks in flight is
%% answered `{error, {agent_down, Reason}}'. A cancelled task is cancelled on
%% its member. With no member left, a task is answered `{error, no_members}'.
%% The coordinator re-registers by itself when the registry restarts.
%%
%% Under a supervisor of your own, use `child_spec/1':
%%
%% ```
%% erlmcp_flow_swarm:child_spec(#{swarm_id => <<"s">>, capabilities => [<<"x">>]})
%% '''
%%
%% and give it members with `add_member/2' once they run.
-module(erlmcp_flow_swarm).
-behaviour(gen_server).

%% API
-export([start_link/3]).
-export([add_member/2]).
-export([remove_member/2]).
-export([members/1]).
-export([stop/1]).
-export([child_spec/1]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-record(member, {mref :: reference(),
                 in_flight = 0 :: non_neg_integer(),
                 assigned = 0 :: non_neg_integer(),
                 %% removed, but still answering tasks it was given
                 retired = false :: boolean()}).
-record(pending, {from :: pid() | reference(), ref :: reference(), member :: pid()}).
-record(state, {
    id :: erlmcp_flow:agent_id(),
    capabilities :: [erlmcp_flow:capability()],
    registry_mon :: undefined | reference(),
    members = #{} :: #{pid() => #member{}},
    pending = #{} :: #{reference() => #pending{}},
    outer = #{} :: #{reference() => reference()}
}).

%%====================================================================
%% API
%%====================================================================

%% @doc Starts a coordinator for `Members' and registers it as the swarm
%% `SwarmId' with `Capabilities'.
-spec start_link(erlmcp_flow:agent_id(), [erlmcp_flow:capability()], [pid()]) ->
          {ok, pid()} | {error, term()}.
start_link(SwarmId, Capabilities, Members) ->
    gen_server:start_link(?MODULE, {SwarmId, Capabilities, Members}, []).

%% @doc Adds a member; adding a member twice changes nothing.
-spec add_member(pid(), pid()) -> ok.
add_member(Swarm, Member) when is_pid(Member) ->
    gen_server:call(Swarm, {add_member, Member}).

%% @doc Removes a member; its tasks in flight still get their answers.
-spec remove_member(pid(), pid()) -> ok.
remove_member(Swarm, Member) ->
    gen_server:call(Swarm, {remove_member, Member}).

%% @doc Each member with its number of tasks in flight, sorted by pid.
-spec members(pid()) -> [{pid(), non_neg_integer()}].
members(Swarm) ->
    gen_server:call(Swarm, members).

%% @doc Stops the coordinator; its registration goes with it.
-spec stop(pid()) -> ok.
stop(Swarm) ->
    gen_server:stop(Swarm).

%% @doc A child specification for a supervisor of your own, from
%% `#{swarm_id := Id, capabilities := Caps, members => [pid()]}' (members
%% default to none: add them with `add_member/2'). `id' (default
%% `{erlmcp_flow_swarm, SwarmId}'), `restart' (default `permanent') and
%% `shutdown' (default 5000) are the child spec's own. Bad options raise
%% `{badarg, {Key, Value}}' or `{badarg, {missing, Key}}'.
-spec child_spec(#{swarm_id := erlmcp_flow:agent_id(),
                   capabilities := [erlmcp_flow:capability(), ...],
                   members => [pid()], id => term(), restart => permanent | transient | temporary,
                   shutdown => brutal_kill | timeout()}) -> supervisor:child_spec().
child_spec(#{swarm_id := Id, capabilities := Caps} = Opts) ->
    Known = [swarm_id, capabilities, members, id, restart, shutdown],
    case lists:sort(maps:keys(Opts)) -- Known of
        [] -> ok;
        [Unknown | _] -> erlang:error({badarg, {unknown_option, Unknown}})
    end,
    #{id => maps:get(id, Opts, {?MODULE, Id}),
      start => {?MODULE, start_link, [Id, Caps, maps:get(members, Opts, [])]},
      restart => maps:get(restart, Opts, permanent),
      shutdown => maps:get(shutdown, Opts, 5000),
      type => worker,
      modules => [?MODULE]};
child_spec(#{swarm_id := _}) ->
    erlang:error({badarg, {missing, capabilities}});
child_spec(Opts) when is_map(Opts) ->
    erlang:error({badarg, {missing, swarm_id}});
child_spec(Opts) ->
    erlang:error({badarg, {opts, Opts}}).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init({erlmcp_flow:agent_id(), [erlmcp_flow:capability()], [pid()]}) ->
          {ok, #state{}} | {stop, term()}.
init({SwarmId, Capabilities, Members}) ->
    case is_list(Members) andalso lists:all(fun is_pid/1, Members) of
        false ->
            {stop, {badarg, members}};
        true ->
            State = lists:foldl(fun add/2, #state{id = SwarmId, capabilities = Capabilities},
                                Members),
            case erlmcp_flow_registration:register(swarm, SwarmId, Capabilities) of
                {ok, MRef} -> {ok, State#state{registry_mon = MRef}};
                {error, Reason} -> {stop, Reason}
            end
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({add_member, Member}, _From, State) ->
    {reply, ok, add(Member, State)};
handle_call({remove_member, Member}, _From, #state{members = Ms} = State) ->
    case maps:take(Member, Ms) of
        {#member{mref = MRef, in_flight = 0}, Ms1} ->
            erlang:demonitor(MRef, [flush]),
            {reply, ok, State#state{members = Ms1}};
        {#member{} = M, Ms1} ->
            %% Keep watching it until its tasks are answered; route nothing new to it.
            {reply, ok, State#state{members = Ms1#{Member => M#member{retired = true}}}};
        error ->
            {reply, ok, State}
    end;
handle_call(members, _From, #state{members = Ms} = State) ->
    {reply, lists:sort([{P, N} || {P, #member{in_flight = N, retired = false}} <- maps:to_list(Ms)]),
     State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({execute_task, Task, Trace, From, Ref}, State) ->
    case least_loaded(State#state.members) of
        none ->
            From ! {task_result, Ref, {error, no_members}},
            {noreply, State};
        Member ->
            Inner = make_ref(),
            Member ! {execute_task, Task, Trace, self(), Inner},
            P = #pending{from = From, ref = Ref, member = Member},
            State1 = bump(Member, 1, State),
            {noreply, State1#state{pending = (State1#state.pending)#{Inner => P},
                                   outer = (State1#state.outer)#{Ref => Inner}}}
    end;
handle_info({task_result, Inner, Result}, State) ->
    case take_pending(Inner, State) of
        {#pending{from = From, ref = Ref}, State1} ->
            From ! {task_result, Ref, Result},
            {noreply, State1};
        error ->
            {noreply, State}
    end;
handle_info({cancel_task, Ref}, #state{outer = Outer} = State) ->
    case Outer of
        #{Ref := Inner} ->
            {#pending{member = Member}, State1} = take_pending(Inner, State),
            Member ! {cancel_task, Inner},
            {noreply, State1};
        #{} ->
            {noreply, State}
    end;
handle_info({'DOWN', MRef, process, _, _}, #state{registry_mon = MRef} = State) ->
    ok = erlmcp_flow_registration:registry_down(),
    {noreply, State#state{registry_mon = undefined}};
handle_info(reregister, #state{id = Id, capabilities = Caps} = State) ->
    case erlmcp_flow_registration:reregister(swarm, Id, Caps) of
        {ok, MRef} -> {noreply, State#state{registry_mon = MRef}};
        later -> {noreply, State};
        {error, Reason} -> {stop, {shutdown, {reregistration_failed, Reason}}, State}
    end;
handle_info({'DOWN', _MRef, process, Member, Reason}, #state{members = Ms} = State) ->
    Lost = [Inner || {Inner, #pending{member = M}} <- maps:to_list(State#state.pending),
                     M =:= Member],
    State1 = lists:foldl(
               fun(Inner, S) ->
                       {#pending{from = From, ref = Ref}, S1} = take_pending(Inner, S),
                       From ! {task_result, Ref, {error, {agent_down, Reason}}},
                       S1
               end, State, Lost),
    {noreply, State1#state{members = maps:remove(Member, Ms)}};
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Internal functions
%%====================================================================

add(Member, #state{members = Ms} = State) ->
    case Ms of
        #{Member := _} -> State;
        #{} -> State#state{members = Ms#{Member => #member{mref = erlang:monitor(process, Member)}}}
    end.

least_loaded(Ms) ->
    Ranked = [{N, A, P} || {P, #member{in_flight = N, assigned = A, retired = false}}
                               <- maps:to_list(Ms)],
    case Ranked of
        [] -> none;
        _ -> element(3, lists:min(Ranked))
    end.

bump(Member, Delta, #state{members = Ms} = State) ->
    case Ms of
        #{Member := #member{in_flight = N, assigned = A} = M} ->
            A1 = A + max(Delta, 0),
            State#state{members = Ms#{Member => M#member{in_flight = N + Delta, assigned = A1}}};
        #{} ->
            State
    end.

take_pending(Inner, #state{pending = Pending, outer = Outer} = State) ->
    case maps:take(Inner, Pending) of
        {#pending{ref = Ref, member = Member} = P, Pending1} ->
            State1 = bump(Member, -1, State#state{pending = Pending1,
                                                  outer = maps:remove(Ref, Outer)}),
            {P, drop_if_retired(Member, State1)};
        error ->
            error
    end.

%% A removed member is forgotten once its last task is answered.
drop_if_retired(Member, #state{members = Ms} = State) ->
    case Ms of
        #{Member := #member{retired = true, in_flight = 0, mref = MRef}} ->
            erlang:demonitor(MRef, [flush]),
            State#state{members = maps:remove(Member, Ms)};
        #{} ->
            State
    end.
