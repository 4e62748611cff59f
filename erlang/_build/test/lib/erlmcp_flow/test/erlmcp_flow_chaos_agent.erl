%% A misbehaving agent for the resilience suite: answers after a few
%% milliseconds (timers, so tasks overlap), and by its profile hangs on every
%% task, answers every task with an error, or dies while busy on a share of
%% its tasks (taking its other tasks in flight with it).
-module(erlmcp_flow_chaos_agent).
-behaviour(erlmcp_flow_agent).

-export([start_link/3]).
-export([init/1, handle_task/3, handle_info/2]).

start_link(Id, Caps, Profile) ->
    erlmcp_flow_agent:start_link(Id, Caps, ?MODULE, Profile).

init(#{seed := Seed} = Profile) ->
    {ok, Profile#{rand => rand:seed_s(exsss, Seed)}}.

handle_task(_Task, _Ctx, #{mode := hang} = S) ->
    {noreply, S};
handle_task(_Task, _Ctx, #{mode := error} = S) ->
    {error, chaos, S};
handle_task(Task, Ctx, #{mode := ok, crash_rate := P, rand := R0} = S) ->
    {U, R1} = rand:uniform_s(R0),
    case U < P of
        true ->
            %% killed while busy
            exit(killed_while_busy);
        false ->
            {D, R2} = rand:uniform_s(5, R1),
            erlang:send_after(D, self(), {done, Ctx, Task}),
            {noreply, S#{rand := R2}}
    end.

handle_info({done, Ctx, Task}, S) ->
    erlmcp_flow_agent:reply(Ctx, {ok, Task}),
    {ok, S}.
