%% The registry and its agents with the gproc backend (registry.backend =
%% gproc), where gproc is on the code path; skipped with the reason
%% otherwise. gproc is not shipped: put a build of it on the path to run
%% this suite, for example
%%
%%     ERL_LIBS=/path/to/dir/holding/gproc rebar3 ct --suite erlmcp_flow_gproc_SUITE
%%
%% The cases are those of the registry and agent suites that depend on the
%% backend: names claimed and released, lookups through gproc, duplicates,
%% capabilities as gproc properties, deaths, and the registry restarting
%% under live agents (which must keep their names and stay routable).
-module(erlmcp_flow_gproc_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([register_find_query/1, duplicates_and_same_pid/1, capabilities_as_properties/1,
         death_releases_the_name/1, registry_restart_keeps_agents/1,
         swarm_survives_registry_restart/1, auto_picks_gproc/1]).

all() ->
    [register_find_query, duplicates_and_same_pid, capabilities_as_properties,
     death_releases_the_name, registry_restart_keeps_agents, swarm_survives_registry_restart,
     auto_picks_gproc].

init_per_suite(Config) ->
    erlmcp_flow_test_util:start_optional(gproc, Config).

end_per_suite(_Config) ->
    _ = application:stop(erlmcp_flow),
    _ = application:stop(gproc),
    ok.

init_per_testcase(auto_picks_gproc, Config) ->
    start(auto),
    Config;
init_per_testcase(_Case, Config) ->
    start(gproc),
    Config.

end_per_testcase(_Case, _Config) ->
    erlmcp_flow_test_util:unregister_all(),
    ok = application:stop(erlmcp_flow),
    application:unset_env(erlmcp_flow, registry).

start(Backend) ->
    _ = application:stop(erlmcp_flow),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, registry, #{backend => Backend}),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    ?assertEqual(erlmcp_flow_registry_gproc, erlmcp_flow_registry:backend()).

name(Id) -> {n, l, {flow_agent, Id}}.

register_find_query(_Config) ->
    A = echo(), B = echo(),
    ok = erlmcp_flow:register_agent(<<"a">>, A, [<<"code">>, <<"review">>]),
    ok = erlmcp_flow:register_agent(<<"b">>, B, [<<"code">>]),
    %% the names are gproc's
    ?assertEqual(A, gproc:where(name(<<"a">>))),
    ?assertEqual({ok, B}, erlmcp_flow:find_agent(<<"b">>)),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"zz">>)),
    ?assertEqual([<<"a">>, <<"b">>], erlmcp_flow:query_agents([<<"code">>])),
    ?assertEqual([<<"a">>], erlmcp_flow:query_agents([<<"review">>, <<"code">>])),
    ?assertMatch({ok, _, #{agent_id := <<"a">>}},
                 erlmcp_flow:execute(#{}, #{capabilities => [<<"review">>]})),
    ok = erlmcp_flow:unregister_agent(<<"a">>),
    ?assertEqual(undefined, gproc:where(name(<<"a">>))),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"a">>)).

duplicates_and_same_pid(_Config) ->
    A = echo(),
    ok = erlmcp_flow:register_agent(<<"a">>, A, [<<"x">>]),
    ?assertEqual({error, already_registered},
                 erlmcp_flow:register_agent(<<"a">>, echo(), [<<"x">>])),
    %% a name held in gproc by another process is refused too
    Squatter = spawn_link(fun() -> gproc:reg(name(<<"taken">>)), receive stop -> ok end end),
    erlmcp_flow_test_util:wait_until(fun() -> gproc:where(name(<<"taken">>)) =:= Squatter end),
    ?assertEqual({error, already_registered},
                 erlmcp_flow:register_agent(<<"taken">>, echo(), [<<"x">>])),
    %% the same pid claiming a name it holds in gproc already is fine (an
    %% agent registering again after a registry restart)
    true = gproc:reg_other(name(<<"mine">>), A),
    ok = erlmcp_flow:register_agent(<<"mine">>, A, [<<"x">>]),
    ?assertEqual({ok, A}, erlmcp_flow:find_agent(<<"mine">>)),
    Squatter ! stop.

capabilities_as_properties(_Config) ->
    {ok, Pid} = erlmcp_flow_agent:start(<<"agent">>, [<<"p">>, <<"q">>], erlmcp_flow_plain_agent, p),
    ?assertEqual([Pid], gproc:lookup_pids({p, l, {flow_capability, <<"p">>}})),
    ?assertEqual([Pid], gproc:lookup_pids({p, l, {flow_capability, <<"q">>}})),
    ok = erlmcp_flow_agent:stop(Pid),
    erlmcp_flow_test_util:sync_registry(),
    ?assertEqual([], gproc:lookup_pids({p, l, {flow_capability, <<"p">>}})).

death_releases_the_name(_Config) ->
    A = echo(),
    ok = erlmcp_flow:register_agent(<<"a">>, A, [<<"x">>]),
    MRef = erlang:monitor(process, A),
    exit(A, kill),
    receive {'DOWN', MRef, process, A, _} -> ok end,
    erlmcp_flow_test_util:sync_registry(),
    ?assertEqual(undefined, gproc:where(name(<<"a">>))),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"a">>)),
    ?assertEqual([], erlmcp_flow:query_agents([<<"x">>])),
    %% the id is free again
    ok = erlmcp_flow:register_agent(<<"a">>, echo(), [<<"x">>]).

%% The report: killing the registry made every agent exit with
%% {shutdown, {reregistration_failed, already_registered}}, since gproc still
%% held their names for them. They must stay alive, registered and routable.
registry_restart_keeps_agents(_Config) ->
    Specs = [erlmcp_flow_agent:child_spec(#{agent_id => Id, capabilities => [<<"echo">>],
                                            module => erlmcp_flow_plain_agent, args => Id,
                                            restart => transient})
             || Id <- [<<"e1">>, <<"e2">>, <<"e3">>]],
    {ok, Sup} = erlmcp_flow_test_sup:start(#{strategy => one_for_one}, Specs),
    Pids = [P || {_, P, _, _} <- supervisor:which_children(Sup)],
    erlmcp_flow_test_util:restart_registry(
      fun() -> erlmcp_flow:query_agents([<<"echo">>]) =:= [<<"e1">>, <<"e2">>, <<"e3">>] end),
    %% the same processes: none exited
    ?assertEqual(lists:sort(Pids), lists:sort([P || {_, P, _, _} <- supervisor:which_children(Sup)])),
    [?assert(is_process_alive(P)) || P <- Pids],
    [?assertEqual({ok, P}, erlmcp_flow:find_agent(Id))
     || {Id, P} <- [{Id, gproc:where(name(Id))} || Id <- [<<"e1">>, <<"e2">>, <<"e3">>]]],
    ?assertMatch({ok, {_, 1}, _}, erlmcp_flow:execute(#{input => 1}, #{capabilities => [<<"echo">>]})),
    erlmcp_flow_test_sup:stop(Sup),
    erlmcp_flow_test_util:sync_registry(),
    ?assertEqual([], erlmcp_flow:query_agents([<<"echo">>])).

swarm_survives_registry_restart(_Config) ->
    Spec = erlmcp_flow_swarm:child_spec(#{swarm_id => <<"s">>, capabilities => [<<"sw">>]}),
    {ok, Sup} = erlmcp_flow_test_sup:start(#{strategy => one_for_one}, [Spec]),
    {ok, Swarm} = erlmcp_flow:find_agent(<<"s">>),
    {ok, Member} = erlmcp_flow_agent:start(erlmcp_flow_plain_agent, m),
    ok = erlmcp_flow_swarm:add_member(Swarm, Member),
    %% gproc kept the name; the new registry's tables know the swarm once it
    %% has registered again
    erlmcp_flow_test_util:restart_registry(
      fun() -> erlmcp_flow:query_agents([<<"sw">>]) =:= [<<"s">>] end),
    ?assertEqual({ok, Swarm}, erlmcp_flow:find_agent(<<"s">>)),
    ?assertMatch({ok, {m, 1}, #{agent_id := <<"s">>}},
                 erlmcp_flow:execute(#{input => 1}, #{capabilities => [<<"sw">>]})),
    erlmcp_flow_test_sup:stop(Sup),
    ok = erlmcp_flow_agent:stop(Member).

auto_picks_gproc(_Config) ->
    %% init_per_testcase asserted the backend; routing works through it
    A = echo(),
    ok = erlmcp_flow:register_agent(<<"auto">>, A, [<<"x">>]),
    ?assertEqual(A, gproc:where(name(<<"auto">>))),
    ?assertMatch({ok, _, #{agent_id := <<"auto">>}}, erlmcp_flow:execute(#{}, #{})).

echo() ->
    erlmcp_flow_test_util:echo_agent().
