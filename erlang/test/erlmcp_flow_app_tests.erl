%% The application and its supervision tree.
-module(erlmcp_flow_app_tests).

-include_lib("eunit/include/eunit.hrl").

app_test_() ->
    {foreach,
     fun erlmcp_flow_test_util:start/0,
     fun erlmcp_flow_test_util:stop/1,
     [{"the tree is the one the design names", fun tree/0},
      {"the registry's death restarts everything with a new router", fun one_for_all/0},
      {"the router is published for callers", fun published/0}]}.

tree() ->
    ?assertMatch({ok, _}, application:get_key(erlmcp_flow, mod)),
    Children = supervisor:which_children(erlmcp_flow_sup),
    ?assertMatch([{erlmcp_flow_telemetry_sup, _, supervisor, _},
                  {erlmcp_flow_task_sup, _, supervisor, _},
                  {erlmcp_flow_registry, _, worker, _},
                  {erlmcp_flow_q_learning, _, worker, _},
                  {erlmcp_flow_bulkhead, _, worker, _}],
                 lists:sort(fun(A, B) -> element(1, A) > element(1, B) end, Children)),
    ?assertMatch({ok, {#{strategy := one_for_all}, _}}, erlmcp_flow_sup:init([])),
    %% by default: metrics, no exporter, no listener
    ?assertMatch([{erlmcp_flow_metrics, _, worker, _}],
                 supervisor:which_children(erlmcp_flow_telemetry_sup)).

one_for_all() ->
    Registry = whereis(erlmcp_flow_registry),
    TaskSup = whereis(erlmcp_flow_task_sup),
    Router = erlmcp_flow_registry:router(),
    MRef = erlang:monitor(process, TaskSup),
    exit(Registry, kill),
    receive {'DOWN', MRef, process, TaskSup, _} -> ok end,
    erlmcp_flow_test_util:wait_until(
      fun() ->
              is_pid(whereis(erlmcp_flow_registry)) andalso is_pid(whereis(erlmcp_flow_task_sup))
      end),
    ?assertNotEqual(Router, erlmcp_flow_registry:router()),
    ?assertMatch(#{agents := 0}, erlmcp_flow:stats()).

published() ->
    Router = erlmcp_flow_registry:router(),
    ?assert(is_reference(Router)),
    ?assertMatch({ok, #{agents := 0}}, erlmcp_flow_nif:router_stats(Router)).
