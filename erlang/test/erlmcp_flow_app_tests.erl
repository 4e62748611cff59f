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
    ?assertMatch([%% the JSON-RPC listeners, when configured (erlmcp_flow_rpc_*)
                  {erlmcp_flow_transport_sup, _, supervisor, _},
                  {erlmcp_flow_telemetry_sup, _, supervisor, _},
                  {erlmcp_flow_task_sup, _, supervisor, _},
                  {erlmcp_flow_registry, _, worker, _},
                  {erlmcp_flow_q_learning, _, worker, _},
                  %% MCP servers as agents (erlmcp_flow_mcp)
                  {erlmcp_flow_mcp_sup, _, supervisor, _},
                  %% the proxies of erlmcp's servers (erlmcp_flow_erlmcp)
                  {erlmcp_flow_erlmcp_sup, _, supervisor, _},
                  %% pg scope, membership, failure detector (erlmcp_flow_cluster)
                  {erlmcp_flow_cluster_sup, _, supervisor, _},
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

%% The report: threads' snapshot caches kept stopped routers (their stores,
%% rows and agents) alive, up to three per scheduler thread. After 20
%% restarts with traffic, the memory the core holds is what one running
%% instance holds; a stopped router gives back its stores at once.
restarts_leave_no_routers_behind_test_() ->
    {timeout, 120, fun restarts/0}.

restarts() ->
    logger:set_primary_config(level, critical),
    _ = application:stop(erlmcp_flow),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    traffic(),
    One = settled_memory(),
    ok = application:stop(erlmcp_flow),
    %% the router resource goes once no process refers to it any more (the
    %% published copy is released by the VM's literal collector, soon after):
    %% its stores (spans, learned rows) go with it; what scheduler threads
    %% still cache of its agents goes when they next route
    erlmcp_flow_test_util:wait_until(fun() -> settled_memory() < One - One div 4 end),
    [begin
         {ok, _} = application:ensure_all_started(erlmcp_flow),
         traffic(),
         ok = application:stop(erlmcp_flow)
     end || _ <- lists:seq(1, 20)],
    %% the last stopped router goes as the first did (the literal collector
    %% decides when): what is measured next is one instance, not a router
    %% still waiting for it
    erlmcp_flow_test_util:wait_until(fun() -> settled_memory() < One - One div 4 end),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    traffic(),
    After = settled_memory(),
    ok = application:stop(erlmcp_flow),
    %% the same traffic into one instance: within a tenth (histograms and
    %% the store's shards fill a little differently from run to run)
    ?assert(After =< One + One div 10 + 65536, {One, After}).

%% 60 agents, 4 callers, 2 000 tasks of two strategies, then the agents go.
traffic() ->
    Agents = [erlmcp_flow_test_util:echo_agent() || _ <- lists:seq(1, 60)],
    [ok = erlmcp_flow:register_agent(<<"a", (integer_to_binary(I))/binary>>, P, [<<"x">>])
     || {I, P} <- lists:zip(lists:seq(1, 60), Agents)],
    Self = self(),
    Callers = [spawn_link(fun() ->
                                  [{ok, _, _} = erlmcp_flow:execute(#{id => I}, #{strategy => S})
                                   || I <- lists:seq(1, 250), S <- [q_learning, round_robin]],
                                  Self ! done
                          end) || _ <- lists:seq(1, 4)],
    [receive done -> ok end || _ <- Callers],
    [P ! stop || P <- Agents],
    erlmcp_flow_test_util:wait_until(fun() -> maps:get(agents, erlmcp_flow:stats()) =:= 0 end),
    %% the echo agents told this process about every task
    flush_seen().

flush_seen() ->
    receive {task_seen, _, _, _} -> flush_seen() after 0 -> ok end.

%% The core's memory once this process's garbage (leases, spans) is freed.
settled_memory() ->
    erlang:garbage_collect(),
    erlmcp_flow_nif:core_memory().
