%% An erlmcp_flow_agent for the benches: answers every task at once
%% (`delay_ms' 0, the default) or after `delay_ms' (a timer, so tasks
%% overlap), with `{ok, AgentUs}': the microseconds the task spent in the
%% agent, from its arrival to its answer, so that a caller can tell routing
%% time from the agent's own.
-module(erlmcp_flow_bench_agent).
-behaviour(erlmcp_flow_agent).

-export([init/1]).
-export([handle_task/3]).
-export([handle_info/2]).

init(Opts) ->
    {ok, maps:get(delay_ms, Opts, 0)}.

handle_task(_Task, _Ctx, 0) ->
    {ok, 0, 0};
handle_task(_Task, Ctx, Delay) ->
    erlang:send_after(Delay, self(), {done, Ctx, erlang:monotonic_time(microsecond)}),
    {noreply, Delay}.

handle_info({done, Ctx, T0}, Delay) ->
    ok = erlmcp_flow_agent:reply(Ctx, {ok, erlang:monotonic_time(microsecond) - T0}),
    {ok, Delay};
handle_info(_Msg, Delay) ->
    {ok, Delay}.
