%% Whole-system behaviour under agent deaths: many callers route tasks while
%% agents are killed at random and restarted by their supervisor. Every task
%% must get exactly one answer, every load must return to zero and every
%% span of the correlation store must be closed.
-module(erlmcp_flow_chaos_SUITE).
-behaviour(supervisor).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, groups/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([kill_agents_while_routing/1, async_tasks_while_killing/1]).
%% supervisor callback for the suite's own agent supervisor
-export([init/1]).

-define(AGENTS, 20).
-define(CALLERS, 50).
-define(TASKS, 10000).
-define(CAP, <<"chaos">>).

all() ->
    [{group, chaos}].

groups() ->
    [{chaos, [sequence], [kill_agents_while_routing, async_tasks_while_killing]}].

init_per_suite(Config) ->
    logger:set_primary_config(level, critical),
    {ok, Apps} = application:ensure_all_started(erlmcp_flow),
    [{apps, Apps} | Config].

end_per_suite(_Config) ->
    ok = application:stop(erlmcp_flow).

init_per_testcase(_Case, Config) ->
    {ok, Sup} = supervisor:start_link(?MODULE, agents),
    unlink(Sup),
    wait_until(fun() -> length(erlmcp_flow:query_agents([?CAP])) =:= ?AGENTS end),
    [{agent_sup, Sup} | Config].

end_per_testcase(_Case, Config) ->
    Sup = ?config(agent_sup, Config),
    MRef = erlang:monitor(process, Sup),
    exit(Sup, shutdown),
    receive {'DOWN', MRef, process, Sup, _} -> ok end,
    wait_until(fun() -> erlmcp_flow_registry:list_agents() =:= [] end),
    ok.

%% 20 simulated agents, restarted whenever they are killed.
init(agents) ->
    Flags = #{strategy => one_for_one, intensity => 100000, period => 1},
    Children = [#{id => I,
                  start => {erlmcp_flow_sim_agent, start_link,
                            [agent_id(I), [?CAP], #{mean_ms => 1 + I rem 3, load_factor => 0.1,
                                                    seed => I}]}}
                || I <- lists:seq(1, ?AGENTS)],
    {ok, {Flags, Children}}.

agent_id(I) -> iolist_to_binary(["chaos-", integer_to_list(I)]).

%%--------------------------------------------------------------------

kill_agents_while_routing(Config) ->
    Killer = start_killer(?config(agent_sup, Config)),
    Self = self(),
    PerCaller = ?TASKS div ?CALLERS,
    Callers = [spawn_link(fun() ->
                                  Answers = [{{C, I}, erlmcp_flow:execute(#{id => {C, I}},
                                                                          #{capabilities => [?CAP],
                                                                            timeout => 5000})}
                                             || I <- lists:seq(1, PerCaller)],
                                  Self ! {answers, self(), Answers, flush()}
                          end) || C <- lists:seq(1, ?CALLERS)],
    Results = [receive {answers, C, A, Stray} -> {A, Stray} end || C <- Callers],
    Kills = stop_killer(Killer),
    Answers = lists:append([A || {A, _} <- Results]),
    Stray = lists:append([S || {_, S} <- Results]),
    check_answers(Answers, Stray, Kills).

async_tasks_while_killing(Config) ->
    Killer = start_killer(?config(agent_sup, Config)),
    Tasks = [begin
                 {ok, _, #{trace_id := T}} =
                     retry_route(#{id => I}, #{capabilities => [?CAP], reply_to => self(),
                                               timeout => 5000}),
                 T
             end || I <- lists:seq(1, ?TASKS div 5)],
    Answers = [receive {erlmcp_flow_result, T, A} -> {T, A} end || T <- Tasks],
    Kills = stop_killer(Killer),
    check_answers(Answers, flush(), Kills).

%%--------------------------------------------------------------------

check_answers(Answers, Stray, Kills) ->
    Ids = [Id || {Id, _} <- Answers],
    ?assertEqual(length(Ids), length(lists:usort(Ids))),
    ?assertEqual([], Stray),
    Outcomes = lists:foldl(fun({_, A}, Acc) -> maps:update_with(classify(A), fun(N) -> N + 1 end, 1, Acc) end,
                           #{}, Answers),
    ct:pal("~b answers after ~b kills: ~p", [length(Answers), Kills, Outcomes]),
    ?assert(Kills > 0),
    ?assertEqual([], maps:keys(Outcomes) -- [ok, agent_down, no_agents_available,
                                              no_available_agent]),
    ?assert(maps:get(ok, Outcomes, 0) > 0),
    %% every lease settled: nothing in flight, on any agent, live or gone
    wait_until(fun() -> maps:get(in_flight, erlmcp_flow:stats()) =:= 0 end),
    [?assertEqual(0, erlmcp_flow:get_agent_load(Id)) || Id <- erlmcp_flow:query_agents([?CAP])],
    %% and every span closed: no correlation entry left open
    wait_until(fun() -> maps:get(correlation_open, erlmcp_flow:stats()) =:= 0 end),
    ok.

classify({ok, _, _}) -> ok;
classify({error, {agent_down, _}}) -> agent_down;
classify({error, {no_available_agent, _}}) -> no_available_agent;
classify({error, Reason}) -> Reason.

%% route_task refuses when every agent is momentarily dead, or all are at
%% their bulkhead limit (it does not wait in line); try again.
retry_route(Task, Req) ->
    case erlmcp_flow:route_task(Task, Req) of
        {error, R} when R =:= no_agents_available; R =:= overloaded ->
            receive after 1 -> ok end,
            retry_route(Task, Req);
        Other ->
            Other
    end.

start_killer(Sup) ->
    Self = self(),
    spawn_link(fun() -> rand:seed(exsss, 42), kill_loop(Sup, Self, 0) end).

stop_killer(Killer) ->
    Killer ! {stop, self()},
    receive {kills, Killer, N} -> N end.

kill_loop(Sup, Owner, N) ->
    receive
        {stop, Owner} -> Owner ! {kills, self(), N}
    after 2 ->
        Pids = [P || {_, P, _, _} <- supervisor:which_children(Sup), is_pid(P)],
        case Pids of
            [] -> kill_loop(Sup, Owner, N);
            _ ->
                exit(lists:nth(rand:uniform(length(Pids)), Pids), kill),
                kill_loop(Sup, Owner, N + 1)
        end
    end.

flush() ->
    receive M -> [M | flush()] after 0 -> [] end.

wait_until(Fun) ->
    erlmcp_flow_test_util:wait_until(Fun).
