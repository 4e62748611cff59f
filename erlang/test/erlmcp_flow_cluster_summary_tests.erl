%% Summary mode's parts on one node: the view and the choice of a node
%% (erlmcp_flow_cluster_summary), the id directory's rules
%% (erlmcp_flow_cluster_ids), and the application started in summary mode
%% (claims answered by this node as the only owner). The cluster of several
%% nodes is erlmcp_flow_cluster_summary_SUITE's.
-module(erlmcp_flow_cluster_summary_tests).

-include_lib("eunit/include/eunit.hrl").

-define(A, 'a@host').
-define(B, 'b@host').
-define(C, 'c@host').

summary(Sets, InFlight, Capacity, Direct) ->
    #{sets => Sets, agents => lists:sum([N || {_, N} <- Sets]), in_flight => InFlight,
      capacity => Capacity, direct => Direct}.

%% The tables belong to the process that made them: each test makes its own.
in_own_process(Fun) ->
    {Pid, Ref} = spawn_monitor(fun() -> exit({done, Fun()}) end),
    receive {'DOWN', Ref, process, Pid, {done, Result}} -> Result;
            {'DOWN', Ref, process, Pid, Other} -> error(Other)
    end.

view_test() ->
    in_own_process(
      fun() ->
              ?assertNot(erlmcp_flow_cluster_summary:enabled()),
              ?assertEqual(#{}, erlmcp_flow_cluster_summary:view()),
              ?assertEqual([], erlmcp_flow_cluster_summary:members()),
              ?assertEqual(undefined, erlmcp_flow_cluster_summary:owner(<<"x">>)),
              ok = erlmcp_flow_cluster_summary:new(),
              ?assert(erlmcp_flow_cluster_summary:enabled()),
              ok = erlmcp_flow_cluster_summary:put(?A, summary([{[<<"x">>], 2}], 0, 20, 0)),
              ok = erlmcp_flow_cluster_summary:put(?B, summary([{[<<"x">>, <<"y">>], 1}], 0, 10, 1)),
              ?assertEqual([?A, ?B], lists:sort(maps:keys(erlmcp_flow_cluster_summary:view()))),
              ok = erlmcp_flow_cluster_summary:delete(?B),
              ?assertEqual([?A], maps:keys(erlmcp_flow_cluster_summary:view())),
              ok = erlmcp_flow_cluster_summary:set_members([?B, ?A, ?A]),
              ?assertEqual([?A, ?B], erlmcp_flow_cluster_summary:members())
      end).

%% A node's weight: agents holding every capability, times the free share
%% (at least 5 %); nodes without such agents, or excluded, are not chosen.
weights_test() ->
    in_own_process(
      fun() ->
              ok = erlmcp_flow_cluster_summary:new(),
              ok = erlmcp_flow_cluster_summary:put(?A, summary([{[<<"x">>], 4}], 0, 40, 0)),
              ok = erlmcp_flow_cluster_summary:put(?B, summary([{[<<"x">>, <<"y">>], 2},
                                                               {[<<"z">>], 5}], 10, 20, 0)),
              ok = erlmcp_flow_cluster_summary:put(?C, summary([{[<<"x">>], 3}], 30, 30, 0)),
              W = maps:from_list(erlmcp_flow_cluster_summary:nodes_for([<<"x">>], [])),
              ?assertEqual(4.0, float(maps:get(?A, W))),
              ?assertEqual(1.0, float(maps:get(?B, W))),
              ?assert(abs(maps:get(?C, W) - 0.15) < 1.0e-9),
              ?assertEqual([?B], [N || {N, _} <- erlmcp_flow_cluster_summary:nodes_for([<<"x">>, <<"y">>], [])]),
              ?assertEqual([], erlmcp_flow_cluster_summary:nodes_for([<<"x">>, <<"z">>], [])),
              ?assertEqual([?A], [N || {N, _} <- erlmcp_flow_cluster_summary:nodes_for([<<"x">>], [?B, ?C])]),
              ok = erlmcp_flow_cluster_summary:put(?A, summary([{[<<"x">>], 4}], 0, 0, 0)),
              ?assert(abs(proplists:get_value(?A, erlmcp_flow_cluster_summary:nodes_for([<<"x">>], [])) - 0.2)
                      < 1.0e-9)
      end).

%% Choices follow the weights, change with the view, and go by key to the
%% node the key hashes to among the candidates.
choose_test() ->
    in_own_process(
      fun() ->
              ok = erlmcp_flow_cluster_summary:new(),
              ?assertEqual(none, erlmcp_flow_cluster_summary:choose([<<"x">>], [], undefined)),
              ok = erlmcp_flow_cluster_summary:put(?A, summary([{[<<"x">>], 9}], 0, 90, 0)),
              ok = erlmcp_flow_cluster_summary:put(?B, summary([{[<<"x">>], 1}], 0, 10, 4)),
              Picks = [erlmcp_flow_cluster_summary:choose([<<"x">>], [], undefined)
                       || _ <- lists:seq(1, 4000)],
              Bs = length([ok || {ok, ?B, _} <- Picks]),
              %% one in ten, within a wide margin
              ?assert(Bs > 250 andalso Bs < 600),
              %% a node naming agents for direct routing comes with their capabilities
              ?assertEqual([lists:usort([erlmcp_flow_cluster_summary:node_capability(?B), <<"x">>])],
                           lists:usort([D || {ok, ?B, D} <- Picks])),
              ?assertEqual([none], lists:usort([D || {ok, ?A, D} <- Picks])),
              %% the view changes: the choice too
              ok = erlmcp_flow_cluster_summary:delete(?A),
              ?assertMatch({ok, ?B, _}, erlmcp_flow_cluster_summary:choose([<<"x">>], [], undefined)),
              ?assertEqual(none, erlmcp_flow_cluster_summary:choose([<<"x">>], [?B], undefined)),
              ok = erlmcp_flow_cluster_summary:put(?A, summary([{[<<"x">>], 9}], 0, 90, 0)),
              ok = erlmcp_flow_cluster_summary:put(?C, summary([{[<<"x">>], 9}], 0, 90, 0)),
              Owner = erlmcp_flow_cluster_summary:owner(<<"key">>, [?A, ?B, ?C]),
              [?assertMatch({ok, Owner, _}, erlmcp_flow_cluster_summary:choose([<<"x">>], [], <<"key">>))
               || _ <- lists:seq(1, 20)],
              Other = erlmcp_flow_cluster_summary:owner(<<"key">>, [?A, ?B, ?C] -- [Owner]),
              ?assertMatch({ok, Other, _}, erlmcp_flow_cluster_summary:choose([<<"x">>], [Owner], <<"key">>)),
              ?assertMatch({ok, _, _}, erlmcp_flow_cluster_summary:choose([<<"x">>], [?A], undefined))
      end).

%% Rendezvous hashing: adding a node moves only the keys it takes.
owner_test() ->
    Keys = [integer_to_binary(I) || I <- lists:seq(1, 2000)],
    Three = [{K, erlmcp_flow_cluster_summary:owner(K, [?A, ?B, ?C])} || K <- Keys],
    Two = [{K, erlmcp_flow_cluster_summary:owner(K, [?A, ?B])} || K <- Keys],
    ?assertEqual([], [K || {{K, O3}, {K, O2}} <- lists:zip(Three, Two), O3 =/= ?C, O3 =/= O2]),
    Share = length([ok || {_, ?C} <- Three]) / length(Keys),
    ?assert(Share > 0.25 andalso Share < 0.42),
    ?assertEqual(undefined, erlmcp_flow_cluster_summary:owner(<<"k">>, [])).

direct_specs_test() ->
    Pid = self(),
    Cap = erlmcp_flow_cluster_summary:node_capability(node()),
    ?assertMatch(<<0, _/binary>>, Cap),
    ?assertEqual([{<<"a">>, Pid, agent, lists:usort([Cap, <<"x">>]), 1}],
                 erlmcp_flow_cluster_summary:direct([{<<"a">>, Pid, agent, [<<"x">>], 1}])),
    ?assertEqual([], erlmcp_flow_cluster_summary:direct([])).

%% The directory: a claim of a free id takes it, the holder's again is
%% fine, another member's is a conflict, a departed holder's is taken over.
take_test() ->
    in_own_process(
      fun() ->
              ?assertEqual(0, erlmcp_flow_cluster_ids:size()),
              ?assertEqual(0, erlmcp_flow_cluster_ids:memory()),
              ok = erlmcp_flow_cluster_ids:new(),
              Members = [?A, ?B],
              ?assertEqual(ok, erlmcp_flow_cluster_ids:take(<<"x">>, ?A, Members)),
              ?assertEqual(ok, erlmcp_flow_cluster_ids:take(<<"x">>, ?A, Members)),
              ?assertEqual({conflict, ?A}, erlmcp_flow_cluster_ids:take(<<"x">>, ?B, Members)),
              ?assertEqual(ok, erlmcp_flow_cluster_ids:take(<<"x">>, ?B, [?B])),
              ?assertEqual(1, erlmcp_flow_cluster_ids:size()),
              ?assert(erlmcp_flow_cluster_ids:memory() > 0),
              %% given back by a node that does not hold it: kept
              ok = erlmcp_flow_cluster_ids:released(?A, [<<"x">>]),
              ?assertEqual({conflict, ?B}, erlmcp_flow_cluster_ids:take(<<"x">>, ?A, Members)),
              ok = erlmcp_flow_cluster_ids:released(?B, [<<"x">>]),
              ?assertEqual(0, erlmcp_flow_cluster_ids:size())
      end).

%% Settling: a node's full list replaces what it held here; an id held
%% twice goes to the smaller node name, the loser named.
settle_test() ->
    in_own_process(
      fun() ->
              ok = erlmcp_flow_cluster_ids:new(),
              Members = [?A, ?B],
              [ok = erlmcp_flow_cluster_ids:take(Id, ?B, Members) || Id <- [<<"b1">>, <<"b2">>, <<"twin">>]],
              %% B no longer lists b2
              ?assertEqual([], erlmcp_flow_cluster_ids:settle(?B, [<<"b1">>, <<"twin">>], Members)),
              ?assertEqual(2, erlmcp_flow_cluster_ids:size()),
              %% A holds the twin too: A < B keeps it, B is told
              ?assertEqual([{?B, <<"twin">>, ?A}], erlmcp_flow_cluster_ids:settle(?A, [<<"twin">>], Members)),
              %% B claiming it again loses to A
              ?assertEqual([{?B, <<"twin">>, ?A}],
                           erlmcp_flow_cluster_ids:settle(?B, [<<"b1">>, <<"twin">>], Members)),
              ?assertEqual({conflict, ?A}, erlmcp_flow_cluster_ids:take(<<"twin">>, ?B, Members))
      end).

%% Pruning: ids of departed holders go, and those another member owns now.
prune_test() ->
    in_own_process(
      fun() ->
              ok = erlmcp_flow_cluster_ids:new(),
              Me = node(),
              Ids = [integer_to_binary(I) || I <- lists:seq(1, 200)],
              [ok = erlmcp_flow_cluster_ids:take(Id, ?A, [?A]) || Id <- Ids],
              ok = erlmcp_flow_cluster_ids:prune([Me]),
              ?assertEqual(0, erlmcp_flow_cluster_ids:size()),
              [ok = erlmcp_flow_cluster_ids:take(Id, ?A, [?A]) || Id <- Ids],
              ok = erlmcp_flow_cluster_ids:prune([Me, ?A]),
              Mine = [Id || Id <- Ids, erlmcp_flow_cluster_summary:owner(Id, [Me, ?A]) =:= Me],
              ?assertEqual(length(Mine), erlmcp_flow_cluster_ids:size()),
              Grouped = erlmcp_flow_cluster_ids:by_owner(Ids, [Me, ?A, ?B]),
              ?assertEqual(lists:sort(Ids), lists:sort(lists:append(maps:values(Grouped)))),
              ?assertEqual(lists:sort([Me, ?A, ?B]), lists:sort(maps:keys(Grouped)))
      end).

%% The application in summary mode on one node: its own summary in view,
%% claims answered by itself (the only member), a registration refused or
%% released as the registry says.
app_in_summary_mode_test_() ->
    {setup,
     fun() ->
             _ = application:load(erlmcp_flow),
             Old = application:get_env(erlmcp_flow, cluster),
             ok = application:set_env(erlmcp_flow, cluster, #{mode => summary, summary_interval_ms => 10}),
             {ok, _} = application:ensure_all_started(erlmcp_flow),
             Old
     end,
     fun(Old) ->
             ok = application:stop(erlmcp_flow),
             case Old of
                 {ok, V} -> application:set_env(erlmcp_flow, cluster, V);
                 undefined -> application:unset_env(erlmcp_flow, cluster)
             end
     end,
     fun(_) ->
             [?_test(begin
                         ?assertEqual(summary, erlmcp_flow_cluster:mode()),
                         Me = node(),
                         ?assertEqual([Me], erlmcp_flow_cluster_summary:members()),
                         Pid = spawn(fun() -> receive stop -> ok end end),
                         ok = erlmcp_flow:register_agent(<<"s1">>, Pid, [<<"cap">>]),
                         %% taken here: the claim succeeds, the registry refuses
                         ?assertEqual({error, already_registered},
                                      erlmcp_flow:register_agent(<<"s1">>, Pid, [<<"cap">>])),
                         ?assertEqual(1, erlmcp_flow_cluster_ids:size()),
                         erlmcp_flow_test_util:await(
                           fun() -> case erlmcp_flow_cluster:summaries() of
                                        #{Me := #{agents := 1}} -> true;
                                        _ -> false
                                    end
                           end, 5000),
                         %% one node: execute/2 goes to the router
                         ?assertEqual({error, no_agents_available},
                                      erlmcp_flow:execute(#{}, #{capabilities => [<<"none">>]})),
                         ok = erlmcp_flow:unregister_agent(<<"s1">>),
                         erlmcp_flow_test_util:await(fun() -> erlmcp_flow_cluster_ids:size() =:= 0 end, 5000),
                         %% a claim from an unknown request shape is refused by
                         %% the server, not a crash
                         ?assertEqual(ok, erlmcp_flow_cluster:claim(<<"free">>)),
                         ok = erlmcp_flow_cluster:release(<<"free">>),
                         erlmcp_flow_test_util:await(fun() -> erlmcp_flow_cluster_ids:size() =:= 0 end, 5000),
                         Pid ! stop
                     end)]
     end}.
