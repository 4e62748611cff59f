%% Resilience under chaos: 60 supervised agents, some of which die while busy
%% (about one task in ten meets one), hang, or answer errors; 20 000 tasks from
%% 100 concurrent callers, some of them killed mid-task. Every task must get
%% exactly one answer, at least 99.9% must succeed, and afterwards every load,
%% permit and process must be back where it started.
-module(erlmcp_flow_resilience_SUITE).
-behaviour(supervisor).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([chaos/1]).
-export([init/1]).

-define(CAP, <<"work">>).
-define(CALLERS, 100).
-define(PER_CALLER, 200).
-define(HANGING, 3).
-define(ERRING, 3).
-define(AGENTS, 60).
-define(CRASH_RATE, 0.012).

all() -> [chaos].

init_per_suite(Config) ->
    logger:set_primary_config(level, critical),
    _ = application:load(erlmcp_flow),
    %% breakers open quickly and stay open for the run
    ok = application:set_env(erlmcp_flow, circuit_breaker,
                             #{min_requests => 5, failure_threshold => 3, timeout => 60000}),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(erlmcp_flow),
    application:unset_env(erlmcp_flow, circuit_breaker).

%% One supervisor per ten agents, under one top supervisor: the agents
%% restart when they die.
init(top) ->
    {ok, {#{strategy => one_for_one, intensity => 100000, period => 1},
          [#{id => G, start => {supervisor, start_link, [?MODULE, {group, G}]},
             type => supervisor} || G <- lists:seq(0, ?AGENTS div 10 - 1)]}};
init({group, G}) ->
    {ok, {#{strategy => one_for_one, intensity => 100000, period => 1},
          [#{id => I, start => {erlmcp_flow_chaos_agent, start_link,
                                [iolist_to_binary(["chaos-", integer_to_list(I)]), [?CAP],
                                 profile(I)]}}
           || I <- lists:seq(G * 10, G * 10 + 9)]}}.

profile(I) when I < ?HANGING -> #{mode => hang, seed => I};
profile(I) when I < ?HANGING + ?ERRING -> #{mode => error, seed => I};
profile(I) -> #{mode => ok, crash_rate => ?CRASH_RATE, seed => I}.

chaos(_Config) ->
    Baseline = erlang:system_info(process_count),
    {ok, Sup} = supervisor:start_link(?MODULE, top),
    erlmcp_flow_test_util:wait_until(
      fun() -> length(erlmcp_flow:query_agents([?CAP])) =:= ?AGENTS end),
    AgentProcs = erlang:system_info(process_count) - Baseline,
    Self = self(),
    Req = #{capabilities => [?CAP], timeout => 300},
    Opts = #{base_retry_delay => 2, max_retry_delay => 20},
    Callers = [spawn_link(fun() ->
                                  Answers = [{{C, I}, erlmcp_flow:execute(#{id => {C, I}}, Req, Opts)}
                                             || I <- lists:seq(1, ?PER_CALLER)],
                                  Self ! {answers, self(), Answers, flush()}
                          end) || C <- lists:seq(1, ?CALLERS)],
    %% callers killed mid-task: they leak nothing
    Doomed = [spawn(fun() -> [erlmcp_flow:execute(#{}, Req, Opts) || _ <- lists:seq(1, 1000)] end)
              || _ <- lists:seq(1, 10)],
    receive after 100 -> ok end,
    [exit(D, kill) || D <- Doomed],
    Results = [receive {answers, C, A, S} -> {A, S} end || C <- Callers],
    Answers = lists:append([A || {A, _} <- Results]),
    ?assertEqual([], lists:append([S || {_, S} <- Results])),
    Ids = [Id || {Id, _} <- Answers],
    ?assertEqual(?CALLERS * ?PER_CALLER, length(lists:usort(Ids))),
    ?assertEqual(length(Ids), length(lists:usort(Ids))),
    Ok = length([ok || {_, {ok, _, _}} <- Answers]),
    Down = length([d || {_, {ok, _, #{tried := T}}} <- Answers,
                        lists:any(fun(#{reason := {agent_down, _}}) -> true; (_) -> false end, T)]),
    Retried = length([r || {_, {ok, _, #{attempts := N}}} <- Answers, N > 1]),
    Failures = [E || {_, {error, _} = E} <- Answers],
    Stats = erlmcp_flow:stats(),
    ct:pal("~b tasks: ~b ok (~.3f%), ~b retried, ~b met an agent dying while busy; "
           "failures: ~p~nbreakers: ~p", [length(Answers), Ok, 100 * Ok / length(Answers),
                                          Retried, Down, lists:sublist(Failures, 5),
                                          maps:with([breaker_opened, breaker_half_opened,
                                                     breaker_closed], Stats)]),
    ?assert(Ok >= 0.999 * length(Answers)),
    ?assert(Down > 0),
    %% every load and permit back to zero
    erlmcp_flow_test_util:wait_until(fun() -> maps:get(in_flight, erlmcp_flow:stats()) =:= 0 end),
    [begin
         {ok, #{in_flight := 0, probes := 0}} = erlmcp_flow:agent_stats(Id)
     end || Id <- erlmcp_flow:query_agents([?CAP])],
    ?assertEqual(0, erlmcp_flow_bulkhead:waiting()),
    %% the callers and the supervised agents are the only processes that came
    unlink(Sup),
    exit(Sup, shutdown),
    erlmcp_flow_test_util:wait_until(
      fun() -> erlang:system_info(process_count) =< Baseline end),
    ct:pal("processes: baseline ~b, agents and supervisors ~b, after ~b",
           [Baseline, AgentProcs, erlang:system_info(process_count)]),
    ok.

flush() ->
    receive M -> [M | flush()] after 0 -> [] end.
