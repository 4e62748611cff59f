%% @doc The registry of agents and swarms: who exists, with which
%% capabilities, and how to reach them.
%%
%% The registry server owns two ETS tables that any process reads directly
%% (`read_concurrency'), monitors every registered process, and mirrors each
%% change into the Rust agent table that routing decisions read. It also
%% creates that table's router resource and publishes it in `persistent_term',
%% so callers reach it without a message to this server. Writes go through the
%% server; lookups never do.
%%
%% An agent that dies is removed from every table, from the backend and from
%% the router as soon as its `DOWN' message is processed; the `DOWN's waiting
%% in the mailbox are handled together, with one change of the router's
%% table (10 000 agents dying at once cost one rebuild, not 10 000).
%%
%% No function here exits its caller: registration waits for the server
%% (each costs about the same however many agents there are), and a
%% registry that is not running answers `{error, not_started}'. Arguments
%% are checked before anything else: a bad one is `{error, {badarg, ...}}'
%% naming it.
-module(erlmcp_flow_registry).
-behaviour(gen_server).

%% API
-export([start_link/0]).
-export([register_agent/3]).
-export([register_agent/4]).
-export([register_swarm/3]).
-export([unregister_agent/1]).
-export([find_agent/1]).
-export([find_agents_by_capability/1]).
-export([query_agents/1]).
-export([get_agent_load/1]).
-export([agent_stats/1]).
-export([router_stats/0]).
-export([advance_clock/1]).
-export([list_agents/0]).
-export([router/0]).
-export([router_if_running/0]).
-export([with_router/1]).
-export([backend/0]).
-export([agents_table/0]).
-export([lookup_pid/1]).
-export([is_capability_list/1]).
-export([capability_limits/1]).
-export([subscribe/1]).
-export([mirror/2]).
-export([unmirror/2]).
-export([local_agents/0]).
-export([register_network_agent/4]).
-export([draining/0]).
-export([set_draining/0]).
-export([remote_task/2]).
-export([remote_task_done/1]).
-export([remote_tasks/1]).
-export([set_claim/1]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-define(AGENTS, erlmcp_flow_agents).
-define(CAPS, erlmcp_flow_capabilities).
-define(ROUTER_KEY, {?MODULE, router}).
%% 'DOWN's handled in one batch at most.
-define(MAX_BATCH, 10000).
%% Registrations handled in one batch at most (one change of the core's table).
-define(MAX_REGISTER_BATCH, 1000).
%% Limits on what a registration carries (the core enforces the same).
-define(MAX_ID_BYTES, 1024).
-define(MAX_CAPABILITY_BYTES, 1024).
-define(MAX_CAPABILITIES, 1024).
-define(BACKEND_KEY, {?MODULE, backend}).
-define(DRAINING_KEY, {?MODULE, draining}).
%% {Claim, Release}: funs that claim an id cluster-wide before it is
%% registered here, and give it back (set by the cluster in summary mode)
-define(CLAIM_KEY, {?MODULE, claim}).
%% {Ref, Node, Caller}: each attempt this node's callers wait for on another
%% node's agent
-define(REMOTE_TASKS, erlmcp_flow_remote_tasks).
%% {Id}: every id a process of this node registered through the API (an
%% agent, a swarm), never taken from the network
-define(LOCAL_IDS, erlmcp_flow_local_ids).

-type kind() :: agent | swarm.
-type agent_opts() :: #{weight => number(), notify_unregister => boolean()}.
-type badarg() :: {badarg, {agent_id | pid | capabilities | weight | notify_unregister
                             | unknown_option, term()}
                   | {agent_id | capability, too_long} | {capabilities, too_many} | opts}.

-export_type([agent_opts/0, badarg/0]).

-record(state, {
    router :: erlmcp_flow_nif:router(),
    backend :: module(),
    monitors = #{} :: #{reference() => erlmcp_flow:agent_id()},
    %% the cluster process, told of every change to this node's own agents
    subscriber :: {pid(), reference()} | undefined,
    %% agents registered with notify_unregister: told when unregister_agent/1
    %% removes them
    notify = #{} :: #{erlmcp_flow:agent_id() => pid()}
}).

%% A registration as the cluster passes it between nodes.
-type spec() :: {erlmcp_flow:agent_id(), pid(), kind(), [erlmcp_flow:capability()], number()}.
-export_type([spec/0]).

%%====================================================================
%% API
%%====================================================================

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Registers `Pid' as the agent `AgentId' holding `Capabilities'.
-spec register_agent(erlmcp_flow:agent_id(), pid(), [erlmcp_flow:capability()]) ->
          ok | {error, already_registered | not_started | badarg()}.
register_agent(AgentId, Pid, Capabilities) ->
    register_agent(AgentId, Pid, Capabilities, #{}).

%% @doc As `register_agent/3', with options: `weight' (a positive number,
%% default 1) for the `weighted' strategy; `notify_unregister' (default
%% false): when `unregister_agent/1' removes the registration (not when the
%% process dies), `Pid' is sent `{erlmcp_flow_unregistered, AgentId}', so
%% that a process standing for something else (a proxy, a connection) can
%% finish its tasks in flight and stop.
-spec register_agent(erlmcp_flow:agent_id(), pid(), [erlmcp_flow:capability()], agent_opts()) ->
          ok | {error, already_registered | not_started | badarg()}.
register_agent(AgentId, Pid, Capabilities, Opts) ->
    local_id(AgentId, register_with(AgentId, Pid, Capabilities, Opts)).

%% @private A registration from the network (a JSON-RPC connection): as
%% `register_agent/4', but an id a process of this node has registered
%% through the API (now or before) is refused `{reserved, AgentId}', so
%% that no client can take a local agent's name, even while it restarts.
-spec register_network_agent(erlmcp_flow:agent_id(), pid(), [erlmcp_flow:capability()], agent_opts()) ->
          ok | {error, already_registered | not_started | {reserved, binary()} | badarg()}.
register_network_agent(AgentId, Pid, Capabilities, Opts) ->
    case is_binary(AgentId) andalso local_id(AgentId) of
        true -> {error, {reserved, AgentId}};
        false -> register_with(AgentId, Pid, Capabilities, Opts)
    end.

register_with(AgentId, Pid, Capabilities, Opts) ->
    case request_registration(AgentId, Pid, Capabilities, agent, Opts) of
        ok when is_map(Opts), map_get(notify_unregister, Opts) =:= true ->
            call({notify_unregister, AgentId, Pid});
        Result ->
            Result
    end.

%% The id of a registration made through the API is remembered as local.
local_id(Id, ok) ->
    _ = catch ets:insert(?LOCAL_IDS, {Id}),
    ok;
local_id(_Id, Result) ->
    Result.

local_id(Id) ->
    try ets:member(?LOCAL_IDS, Id)
    catch error:badarg -> false
    end.

%% @doc Registers `CoordinatorPid' as the swarm `SwarmId'; the coordinator
%% answers the agent protocol for the swarm's members.
-spec register_swarm(erlmcp_flow:agent_id(), pid(), [erlmcp_flow:capability()]) ->
          ok | {error, already_registered | not_started | badarg()}.
register_swarm(SwarmId, CoordinatorPid, Capabilities) ->
    local_id(SwarmId, request_registration(SwarmId, CoordinatorPid, Capabilities, swarm, #{})).

%% @doc Removes an agent or swarm; unknown ids are ignored. Another node's
%% agent is unregistered by its own node's registry (and so from every
%% node's view); when that node cannot be reached, from this node's view.
-spec unregister_agent(erlmcp_flow:agent_id()) -> ok | {error, not_started | {badarg, agent_id}}.
unregister_agent(AgentId) when is_binary(AgentId) ->
    case lookup_pid(AgentId) of
        Pid when is_pid(Pid), node(Pid) =/= node() ->
            _ = erlmcp_flow_call:call({?MODULE, node(Pid)}, {unregister, AgentId}, 5000),
            call({unmirror, node(Pid), [{AgentId, Pid}]});
        _ ->
            call({unregister, AgentId})
    end;
unregister_agent(_) ->
    {error, {badarg, agent_id}}.

%% @doc The pid registered under `AgentId'.
-spec find_agent(erlmcp_flow:agent_id()) ->
          {ok, pid()} | {error, not_found | not_started | {badarg, agent_id}}.
find_agent(AgentId) when is_binary(AgentId) ->
    case router_if_running() of
        undefined ->
            {error, not_started};
        _ ->
            try (backend()):whereis_name(AgentId) of
                undefined ->
                    %% another node's agent is in this registry's table only
                    case lookup_pid(AgentId) of
                        undefined -> {error, not_found};
                        Pid -> {ok, Pid}
                    end;
                Pid -> {ok, Pid}
            catch
                error:badarg -> {error, not_found}
            end
    end;
find_agent(_) ->
    {error, {badarg, agent_id}}.

%% @doc The pids of every agent and swarm holding `Capability'.
-spec find_agents_by_capability(erlmcp_flow:capability()) ->
          [pid()] | {error, not_started | {badarg, capability}}.
find_agents_by_capability(Capability) when is_binary(Capability), Capability =/= <<>> ->
    running(fun() -> [Pid || {_, Pid} <- holders(Capability)] end);
find_agents_by_capability(_) ->
    {error, {badarg, capability}}.

%% @doc The ids, sorted, of every agent and swarm holding all of
%% `Capabilities'; with `[]', of every agent and swarm.
-spec query_agents([erlmcp_flow:capability()]) ->
          [erlmcp_flow:agent_id()] | {error, not_started | {badarg, capabilities}}.
query_agents(Capabilities) ->
    case is_capability_list(Capabilities) of
        true -> running(fun() -> holders_of_all(Capabilities) end);
        false -> {error, {badarg, capabilities}}
    end.

holders_of_all([]) ->
    [Id || {Id, _, _, _} <- list_agents()];
holders_of_all([First | Rest]) ->
    %% the capability table is ordered by {Cap, Id}: already sorted
    [Id || {Id, _} <- holders(First), holds_all(Id, Rest)].

%% @doc Tasks in flight on the agent right now; 0 for an unknown id.
-spec get_agent_load(erlmcp_flow:agent_id()) ->
          non_neg_integer() | {error, not_started | {badarg, agent_id}}.
get_agent_load(AgentId) ->
    case agent_stats(AgentId) of
        {ok, #{in_flight := N}} -> N;
        {error, not_found} -> 0;
        {error, _} = E -> E
    end.

%% @doc The live counters of one agent, from the Rust core.
-spec agent_stats(erlmcp_flow:agent_id()) ->
          {ok, map()} | {error, not_found | not_started | {badarg, agent_id}}.
agent_stats(AgentId) when is_binary(AgentId) ->
    with_router(fun(Router) -> erlmcp_flow_nif:agent_stats(Router, AgentId) end);
agent_stats(_) ->
    {error, {badarg, agent_id}}.

%% @doc Router-wide figures kept by the core: registered `agents', leases
%% `in_flight' over every agent (removed ones included) and `completed',
%% learning `episodes' and the current exploration rate `epsilon', breaker
%% transitions, the sampled decision latency and the correlation store (see
%% `erlmcp_flow_metrics:stats/0').
-spec router_stats() -> #{agents := non_neg_integer(), in_flight := non_neg_integer(),
                          episodes := non_neg_integer(), epsilon := float(),
                          atom() => number()}.
router_stats() ->
    {ok, Stats} = erlmcp_flow_nif:router_stats(router()),
    Stats.

%% @private The time seam: moves a manual clock (application env
%% `clock => manual') forward by `Us' microseconds.
-spec advance_clock(non_neg_integer()) -> {ok, non_neg_integer()} | {error, system_clock}.
advance_clock(Us) ->
    erlmcp_flow_nif:clock_advance(router(), Us).

%% @doc Every registration: `{Id, Pid, Kind, Capabilities}', sorted by id.
-spec list_agents() -> [{erlmcp_flow:agent_id(), pid(), kind(), [erlmcp_flow:capability()]}].
list_agents() ->
    try ets:tab2list(?AGENTS) of
        Rows -> lists:sort([{Id, Pid, Kind, Caps} || {Id, Pid, Kind, Caps, _, _} <- Rows])
    catch
        error:badarg -> []
    end.

%% @doc The router resource of the running registry.
-spec router() -> erlmcp_flow_nif:router().
router() ->
    persistent_term:get(?ROUTER_KEY).

%% @doc The router resource, or `undefined' when the registry is not running.
-spec router_if_running() -> erlmcp_flow_nif:router() | undefined.
router_if_running() ->
    persistent_term:get(?ROUTER_KEY, undefined).

%% @doc `Fun(Router)' with the running registry's router, or
%% `{error, not_started}'.
-spec with_router(fun((erlmcp_flow_nif:router()) -> Result)) -> Result | {error, not_started}.
with_router(Fun) ->
    case router_if_running() of
        undefined -> {error, not_started};
        Router -> Fun(Router)
    end.

running(Fun) ->
    with_router(fun(_) -> Fun() end).

%% @doc The name backend of the running registry.
-spec backend() -> module().
backend() ->
    persistent_term:get(?BACKEND_KEY, erlmcp_flow_registry_native).

%% @private
-spec agents_table() -> atom().
agents_table() ->
    ?AGENTS.

%% @private The pid of `AgentId' from the registry's own table.
-spec lookup_pid(erlmcp_flow:agent_id()) -> pid() | undefined.
lookup_pid(AgentId) ->
    try ets:lookup_element(?AGENTS, AgentId, 2)
    catch error:badarg -> undefined
    end.

%% @doc Whether this node is draining (`erlmcp_flow:drain/1'): it takes no
%% new task until the application restarts.
-spec draining() -> boolean().
draining() ->
    persistent_term:get(?DRAINING_KEY, false).

%% @private The node takes no new task from now on (until the registry
%% restarts with the application).
-spec set_draining() -> ok.
set_draining() ->
    case draining() of
        true -> ok;
        false -> persistent_term:put(?DRAINING_KEY, true)
    end.

%% @private An attempt this node's caller now waits for on `Node''s agent,
%% under the attempt's monitor reference.
-spec remote_task(reference(), node()) -> ok.
remote_task(Ref, Node) ->
    try ets:insert(?REMOTE_TASKS, {Ref, Node, self()}) of
        true -> ok
    catch
        error:badarg -> ok
    end.

%% @private The attempt `Ref' is settled.
-spec remote_task_done(reference()) -> ok.
remote_task_done(Ref) ->
    try ets:delete(?REMOTE_TASKS, Ref) of
        true -> ok
    catch
        error:badarg -> ok
    end.

%% @private The attempts this node's callers wait for on `Node''s agents
%% (those of callers that died meanwhile are dropped).
-spec remote_tasks(node()) -> non_neg_integer().
remote_tasks(Node) ->
    try ets:select(?REMOTE_TASKS, [{{'$1', Node, '$2'}, [], [{{'$1', '$2'}}]}]) of
        Tasks ->
            lists:foldl(fun({Ref, Caller}, N) ->
                                case is_process_alive(Caller) of
                                    true -> N + 1;
                                    false -> ets:delete(?REMOTE_TASKS, Ref), N
                                end
                        end, 0, Tasks)
    catch
        error:badarg -> 0
    end.

%% @private The cluster process subscribes: it is told `{registry, added,
%% [spec()]}' and `{registry, removed, [{Id, Pid}]}' for this node's own
%% agents from now on (those registered before, it reads with
%% local_agents/0).
-spec subscribe(pid()) -> ok | {error, not_started}.
subscribe(Pid) ->
    call({subscribe, Pid}).

%% @private Another node's agents join this node's view and routing. An id
%% already held by a different agent is a conflict (both sides registered it
%% while apart): the agent of the smaller node name keeps it, on every node
%% alike; when that is the other node's, this node's holder is unregistered
%% (a warning is logged).
-spec mirror(node(), [spec()]) -> ok | {error, not_started}.
mirror(Node, Specs) ->
    call({mirror, Node, Specs}).

%% @private Another node's agents leave this node's view: `all' of them, or
%% those named with their pid (an id now held by another agent stays).
-spec unmirror(node(), all | [{erlmcp_flow:agent_id(), pid()}]) -> ok | {error, not_started}.
unmirror(Node, Which) ->
    call({unmirror, Node, Which}).

%% @private The cluster's claim of ids (`{Claim, Release}', each a fun of
%% the id run in the registering process), or `undefined': none.
-spec set_claim({fun((binary()) -> ok | {error, already_registered}), fun((binary()) -> term())}
                | undefined) -> ok.
set_claim(undefined) ->
    _ = persistent_term:erase(?CLAIM_KEY),
    ok;
set_claim({Claim, Release} = Funs) when is_function(Claim, 1), is_function(Release, 1) ->
    persistent_term:put(?CLAIM_KEY, Funs).

%% @private This node's own registrations.
-spec local_agents() -> [spec()].
local_agents() ->
    try ets:tab2list(?AGENTS) of
        Rows -> [{Id, Pid, Kind, Caps, W} || {Id, Pid, Kind, Caps, _, W} <- Rows, node(Pid) =:= node()]
    catch
        error:badarg -> []
    end.

%% @private A proper list of non-empty binaries (possibly empty).
-spec is_capability_list(term()) -> boolean().
is_capability_list([]) -> true;
is_capability_list([C | Rest]) when is_binary(C), C =/= <<>> -> is_capability_list(Rest);
is_capability_list(_) -> false.

%% @private A capability list's bounds (registrations and requirements
%% alike): at most 1 024 capabilities of at most 1 024 bytes each. `Caps'
%% is a capability list (is_capability_list/1).
-spec capability_limits([erlmcp_flow:capability()]) ->
          ok | {error, {capabilities, too_many} | {capability, too_long}}.
capability_limits(Caps) ->
    case length(Caps) =< ?MAX_CAPABILITIES of
        false ->
            {error, {capabilities, too_many}};
        true ->
            case lists:all(fun(C) -> byte_size(C) =< ?MAX_CAPABILITY_BYTES end, Caps) of
                true -> ok;
                false -> {error, {capability, too_long}}
            end
    end.

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #state{}} | {stop, {gproc_not_running, gproc}}.
init([]) ->
    Choice = erlmcp_flow_config:get(registry, backend),
    case erlmcp_flow_registry_backend:select(Choice) of
        {ok, Backend} ->
            logger:info("erlmcp_flow: registry backend ~ts (registry.backend = ~ts)",
                        [Backend, Choice]),
            %% terminate/2 runs on shutdown: it unpublishes the router
            process_flag(trap_exit, true),
            _ = ets:new(?AGENTS, [named_table, protected, set, {read_concurrency, true}]),
            %% {{Cap, Id}, Pid}: ordered, so a capability's holders are one
            %% range, and adding or removing one holder costs the same however
            %% many there are
            _ = ets:new(?CAPS, [named_table, protected, ordered_set, {read_concurrency, true}]),
            _ = ets:new(?REMOTE_TASKS, [named_table, public, set, {write_concurrency, true}]),
            _ = ets:new(?LOCAL_IDS, [named_table, public, set, {write_concurrency, true}]),
            _ = persistent_term:erase(?DRAINING_KEY),
            {ok, Router} = erlmcp_flow_nif:router_new(router_options()),
            persistent_term:put(?ROUTER_KEY, Router),
            persistent_term:put(?BACKEND_KEY, Backend),
            {ok, #state{router = Router, backend = Backend}};
        {error, Reason} ->
            {stop, Reason}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({register, Id, Pid, Caps, Kind, Weight}, From, State0) ->
    %% deaths already in the mailbox first: an agent restarted under its old
    %% id must find it free once the old one's 'DOWN' has arrived, even
    %% though the batch below takes registrations out of turn
    State = down_now(State0),
    %% registrations waiting in the mailbox join this one: one change of the
    %% core's table for all of them
    Batch = more_registrations([{From, {Id, Pid, Caps, Kind, Weight}}], ?MAX_REGISTER_BATCH - 1),
    {noreply, register_batch(lists:reverse(Batch), State)};
handle_call({unregister, Id}, _From, State) ->
    {reply, ok, do_unregister(Id, State)};
handle_call({notify_unregister, Id, Pid}, _From, #state{notify = Notify} = State) ->
    case lookup_pid(Id) of
        Pid ->
            {reply, ok, State#state{notify = Notify#{Id => Pid}}};
        _ ->
            %% unregistered between the two calls: told now
            Pid ! {erlmcp_flow_unregistered, Id},
            {reply, ok, State}
    end;
handle_call({subscribe, Pid}, _From, #state{subscriber = Old} = State) ->
    _ = case Old of {_, OldRef} -> erlang:demonitor(OldRef, [flush]); undefined -> ok end,
    {reply, ok, State#state{subscriber = {Pid, erlang:monitor(process, Pid)}}};
handle_call({mirror, Node, Specs}, _From, State0) ->
    State = down_now(State0),
    {reply, ok, mirror_specs(Node, Specs, State)};
handle_call({unmirror, Node, all}, _From, State) ->
    Ids = [{Id, unmirrored} || {Id, Pid, _, _, _, _} <- ets:tab2list(?AGENTS), node(Pid) =:= Node],
    {reply, ok, forget(Ids, State)};
handle_call({unmirror, Node, IdPids}, _From, State) ->
    Ids = [{Id, unmirrored} || {Id, Pid} <- IdPids, node(Pid) =:= Node, Node =/= node(),
                               lookup_pid(Id) =:= Pid],
    {reply, ok, forget(Ids, State)};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({'DOWN', MRef, process, _Pid, _Reason}, #state{subscriber = {_, MRef}} = State) ->
    {noreply, State#state{subscriber = undefined}};
handle_info({'DOWN', MRef, process, _Pid, Reason}, #state{monitors = Mons} = State) ->
    case maps:take(MRef, Mons) of
        {Id, Mons1} ->
            {Gone, Mons2} = more_down([{Id, {down, Reason}}], Mons1, ?MAX_BATCH - 1),
            {noreply, remove_all(Gone, State#state{monitors = Mons2})};
        error ->
            {noreply, State}
    end;
handle_info(_Info, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    %% The router goes with this process: callers find no stale one, and
    %% nothing keeps it (its agents, correlation store, learned rows) alive.
    _ = persistent_term:erase(?ROUTER_KEY),
    _ = persistent_term:erase(?BACKEND_KEY),
    _ = persistent_term:erase(?DRAINING_KEY),
    ok.

%%====================================================================
%% Internal functions
%%====================================================================

%% A call to the server that never exits the caller: it waits as long as the
%% server works, and a server that is not running (or dies meanwhile)
%% answers an error.
call(Request) ->
    try
        gen_server:call(?MODULE, Request, infinity)
    catch
        exit:{noproc, _} -> {error, not_started};
        exit:{Reason, {gen_server, call, _}} -> {error, {registry_down, Reason}}
    end.

request_registration(Id, Pid, Caps, Kind, Opts) ->
    case validate(Id, Pid, Caps) of
        ok ->
            case weight(Opts) of
                {ok, W} -> claimed(Id, fun() -> call({register, Id, Pid, lists:usort(Caps), Kind, W}) end);
                {error, _} = E -> E
            end;
        {error, _} = E ->
            E
    end.

%% Where the cluster keeps ids unique by claims (its summary mode), the id
%% is claimed from the node that owns its part of the id space first, in
%% the caller's process; a registration refused here gives the claim back,
%% unless this node holds the id already.
claimed(Id, Register) ->
    case persistent_term:get(?CLAIM_KEY, undefined) of
        undefined ->
            Register();
        {Claim, Release} ->
            case Claim(Id) of
                ok ->
                    case Register() of
                        ok ->
                            ok;
                        Refused ->
                            _ = ets:member(?AGENTS, Id) orelse Release(Id),
                            Refused
                    end;
                {error, already_registered} = E ->
                    E
            end
    end.

weight(Opts) when not is_map(Opts) ->
    {error, {badarg, opts}};
weight(Opts) ->
    case lists:sort(maps:keys(maps:without([weight, notify_unregister], Opts))) of
        [] ->
            case {maps:get(weight, Opts, 1), maps:get(notify_unregister, Opts, false)} of
                {_, N} when not is_boolean(N) -> {error, {badarg, {notify_unregister, N}}};
                {W, _} when is_number(W), W > 0, W < 1.0e300 -> {ok, W};
                {W, _} -> {error, {badarg, {weight, W}}}
            end;
        [Unknown | _] ->
            {error, {badarg, {unknown_option, Unknown}}}
    end.

%% The router's settings, from the application's configuration.
router_options() ->
    Q = erlmcp_flow_config:get(q_learning),
    LB = erlmcp_flow_config:get(load_balancer),
    QKeys = [alpha, gamma, epsilon, epsilon_min, epsilon_decay, epsilon_schedule,
             softmax_temperature, fast_threshold_ms, slow_threshold_ms, task_classes,
             stale_after_ms],
    LBKeys = [consistent_hash_vnodes, hash_balance_factor, ewma_decay_ms, sample_above],
    CB = erlmcp_flow_config:get(circuit_breaker),
    Breaker = #{breaker_enabled => maps:get(enabled, CB),
                failure_threshold => maps:get(failure_threshold, CB),
                min_requests => maps:get(min_requests, CB),
                failure_rate_threshold => maps:get(failure_rate_threshold, CB),
                breaker_timeout_ms => maps:get(timeout, CB),
                half_open_max_requests => maps:get(half_open_max_requests, CB),
                success_threshold => maps:get(success_threshold, CB),
                slow_call_threshold_ms => maps:get(slow_call_threshold, CB),
                window_type => maps:get(window_type, CB),
                window_size => maps:get(window_size, CB),
                max_concurrent => maps:get(max_concurrent, CB)},
    Corr = erlmcp_flow_config:get(correlation),
    Export = erlmcp_flow_config:get(export),
    Tracing = #{correlation_ttl_ms => maps:get(ttl_ms, Corr),
                correlation_max_entries => maps:get(max_entries, Corr),
                %% finished spans are queued for export only when a sink is set
                export_queue => case erlmcp_flow_config:export_enabled(Export) of
                                    true -> maps:get(queue_size, Export);
                                    false -> 0
                                end},
    %% the consistent-hash ring (150 points of 8 bytes an agent by default)
    %% is built on the first task routed by key, unless that is the default
    LazyRing = maps:get(strategy, LB) =/= consistent_hash,
    maps:merge(maps:merge(maps:with(QKeys, Q), maps:with(LBKeys, LB)),
               maps:merge(Breaker#{clock => erlmcp_flow_config:clock(), lazy_ring => LazyRing},
                          Tracing)).

%% The first bad argument, named with its value (or `too_long' past a limit).
validate(Id, _Pid, _Caps) when not is_binary(Id); Id =:= <<>> ->
    {error, {badarg, {agent_id, Id}}};
validate(Id, _Pid, _Caps) when byte_size(Id) > ?MAX_ID_BYTES ->
    {error, {badarg, {agent_id, too_long}}};
validate(_Id, Pid, _Caps) when not is_pid(Pid); node(Pid) =/= node() ->
    {error, {badarg, {pid, Pid}}};
validate(_Id, _Pid, Caps) ->
    case Caps =/= [] andalso is_capability_list(Caps) of
        false ->
            {error, {badarg, {capabilities, Caps}}};
        true ->
            case capability_limits(Caps) of
                ok -> ok;
                {error, Why} -> {error, {badarg, Why}}
            end
    end.

%% More registrations waiting in the mailbox, up to `N', newest first.
more_registrations(Batch, 0) ->
    Batch;
more_registrations(Batch, N) ->
    receive
        {'$gen_call', From, {register, Id, Pid, Caps, Kind, Weight}} ->
            more_registrations([{From, {Id, Pid, Caps, Kind, Weight}} | Batch], N - 1)
    after 0 ->
        Batch
    end.

%% Registers a batch in order, answering each caller: ids taken (before or
%% earlier in the batch) or refused by the backend are refused; the others
%% go into the core's table with one change, then into the lookup tables.
register_batch(Batch, #state{router = Router, backend = Backend} = State) ->
    {Accepted, _} =
        lists:foldl(
          fun({From, {Id, Pid, _Caps, _Kind, _Weight} = Spec}, {Acc, Taken}) ->
                  case ets:member(?AGENTS, Id) orelse sets:is_element(Id, Taken) of
                      true ->
                          gen_server:reply(From, {error, already_registered}),
                          {Acc, Taken};
                      false ->
                          case Backend:register_name(Id, Pid) of
                              ok ->
                                  {[{From, Spec} | Acc], sets:add_element(Id, Taken)};
                              {error, _} = E ->
                                  gen_server:reply(From, E),
                                  {Acc, Taken}
                          end
                  end
          end, {[], sets:new([{version, 2}])}, Batch),
    Inserted = insert_all(Router, lists:reverse(Accepted)),
    State1 = lists:foldl(
      fun({From, {Id, Pid, _Caps, _Kind, _Weight}, {error, _} = E}, St) ->
              ok = Backend:unregister_name(Id, Pid),
              gen_server:reply(From, E),
              St;
         ({From, {Id, Pid, Caps, Kind, Weight}, ok}, St) ->
              St1 = add_row(Id, Pid, Kind, Caps, Weight, St),
              gen_server:reply(From, ok),
              St1
      end, State, Inserted),
    notify(added, [{Id, Pid, Kind, Caps, W} || {_, {Id, Pid, Caps, Kind, W}, ok} <- Inserted], State1).

add_row(Id, Pid, Kind, Caps, Weight, St) ->
    MRef = erlang:monitor(process, Pid),
    ets:insert(?CAPS, [{{Cap, Id}, Pid} || Cap <- Caps]),
    ets:insert(?AGENTS, {Id, Pid, Kind, Caps, MRef, Weight}),
    agent_event(register, Id, Pid, Kind, Caps, #{}),
    St#state{monitors = (St#state.monitors)#{MRef => Id}}.

%% The cluster process hears of this node's own agents only.
notify(_Event, [], State) ->
    State;
notify(Event, Items, #state{subscriber = {Pid, _}} = State) ->
    Pid ! {registry, Event, Items},
    State;
notify(_Event, _Items, State) ->
    State.

%% Another node's registrations, each checked against the table: new ids
%% join (one change of the core's table), the same agent again is nothing,
%% and a different holder of the id is a conflict settled by node name.
mirror_specs(Node, Specs, #state{router = Router} = State) ->
    Valid = [S || {Id, Pid, Kind, Caps, W} = S <- Specs, is_pid(Pid), node(Pid) =:= Node,
                  Node =/= node(), validate(Id, self(), Caps) =:= ok,
                  Kind =:= agent orelse Kind =:= swarm, is_number(W), W > 0],
    {Add, Displace} =
        lists:foldl(
          fun({Id, Pid, _, _, _} = S, {A, D}) ->
                  case ets:lookup(?AGENTS, Id) of
                      [] -> {[S | A], D};
                      [{Id, Pid, _, _, _, _}] -> {A, D};
                      [{Id, Held, _, _, _, _}] ->
                          case Node < node(Held) of
                              true ->
                                  logger:warning("erlmcp_flow: agent id ~ts was registered on ~ts and "
                                                 "on ~ts while they were apart; ~ts keeps it "
                                                 "(the smaller node name)",
                                                 [Id, node(Held), Node, Node]),
                                  {[S | A], [{Id, {conflict, Node}} | D]};
                              false ->
                                  {A, D}
                          end
                  end
          end, {[], []}, lists:ukeysort(1, Valid)),
    State1 = forget(Displace, State),
    Specs1 = [{Id, Pid, Caps, Kind, W} || {Id, Pid, Kind, Caps, W} <- lists:reverse(Add)],
    case Specs1 of
        [] ->
            State1;
        _ ->
            Results = case erlmcp_flow_nif:agent_insert_many(Router, Specs1) of
                          ok -> [{Spec, ok} || Spec <- Specs1];
                          {error, _} -> [{Spec, erlmcp_flow_nif:agent_insert(Router, Id, Pid, Caps, Kind, W)}
                                         || {Id, Pid, Caps, Kind, W} = Spec <- Specs1]
                      end,
            lists:foldl(fun({{Id, Pid, Caps, Kind, W}, ok}, St) -> add_row(Id, Pid, Kind, Caps, W, St);
                           ({_, {error, _}}, St) -> St
                        end, State1, Results)
    end.

%% Removes rows, demonitoring them: this node's own become `removed' for
%% the cluster.
forget([], State) ->
    State;
forget(Gone, #state{monitors = Mons} = State) ->
    Mons1 = lists:foldl(fun({Id, _}, M) ->
                                case ets:lookup(?AGENTS, Id) of
                                    [{Id, _, _, _, MRef, _}] ->
                                        erlang:demonitor(MRef, [flush]),
                                        maps:remove(MRef, M);
                                    [] ->
                                        M
                                end
                        end, Mons, Gone),
    remove_all(Gone, State#state{monitors = Mons1}).

%% Each accepted registration with its result: all in one change of the
%% core's table or, when the core refuses the batch, one by one, so that
%% only the bad ones fail.
insert_all(_Router, []) ->
    [];
insert_all(Router, Accepted) ->
    case erlmcp_flow_nif:agent_insert_many(Router, [Spec || {_, Spec} <- Accepted]) of
        ok ->
            [{From, Spec, ok} || {From, Spec} <- Accepted];
        {error, _} ->
            [{From, Spec, erlmcp_flow_nif:agent_insert(Router, Id, Pid, Caps, Kind, W)}
             || {From, {Id, Pid, Caps, Kind, W} = Spec} <- Accepted]
    end.

do_unregister(Id, State) ->
    forget([{Id, unregistered}], State).

%% The 'DOWN's of agents waiting in the mailbox now, handled as one batch.
down_now(#state{monitors = Mons} = State) ->
    case more_down([], Mons, ?MAX_BATCH) of
        {[], _} -> State;
        {Gone, Mons1} -> remove_all(Gone, State#state{monitors = Mons1})
    end.

%% More dead agents whose 'DOWN' waits in the mailbox, up to `N', each as
%% `{Id, {down, Reason}}'.
more_down(Gone, Mons, 0) ->
    {Gone, Mons};
more_down(Gone, Mons, N) ->
    receive
        {'DOWN', MRef, process, _, Reason} when is_map_key(MRef, Mons) ->
            {Id, Mons1} = maps:take(MRef, Mons),
            more_down([{Id, {down, Reason}} | Gone], Mons1, N - 1)
    after 0 ->
        {Gone, Mons}
    end.

%% Drops agents (`{Id, Why}') from the router first, with one change of its
%% table, so no new decision picks them; then from the lookup tables and
%% the backend.
remove_all(Gone, #state{router = Router, backend = Backend} = State) ->
    Rows = [{Row, Why} || {Id, Why} <- Gone, Row <- ets:lookup(?AGENTS, Id)],
    _ = erlmcp_flow_nif:agent_remove_many(Router, [Id || {{Id, _, _, _, _, _}, _} <- Rows]),
    lists:foreach(
      fun({{Id, Pid, Kind, Caps, _MRef, _W}, Why}) ->
              ets:delete(?AGENTS, Id),
              lists:foreach(fun(Cap) -> ets:delete(?CAPS, {Cap, Id}) end, Caps),
              _ = node(Pid) =:= node() andalso (ok =:= Backend:unregister_name(Id, Pid)),
              agent_event(unregister, Id, Pid, Kind, Caps, #{reason => Why})
      end, Rows),
    notify(removed, [{Id, Pid} || {{Id, Pid, _, _, _, _}, _} <- Rows, node(Pid) =:= node()],
           tell_unregistered(Rows, State)).

%% Agents registered with notify_unregister hear of their removal, unless
%% by their own death.
tell_unregistered(_Rows, #state{notify = Notify} = State) when map_size(Notify) =:= 0 ->
    State;
tell_unregistered(Rows, #state{notify = Notify} = State) ->
    Notify1 = lists:foldl(
                fun({{Id, Pid, _, _, _, _}, Why}, N) ->
                        case maps:take(Id, N) of
                            {Pid, N1} ->
                                _ = case Why of
                                        {down, _} -> ok;
                                        _ -> Pid ! {erlmcp_flow_unregistered, Id}
                                    end,
                                N1;
                            _ ->
                                N
                        end
                end, Notify, Rows),
    State#state{notify = Notify1}.

agent_event(Event, Id, Pid, Kind, Caps, Extra) ->
    erlmcp_flow_telemetry:execute([agent, Event], #{monotonic_time => erlang:monotonic_time()},
                                  Extra#{agent_id => Id, pid => Pid, kind => Kind,
                                         capabilities => Caps}).

%% {Id, Pid} of every holder of `Cap', by id.
holders(Cap) ->
    try ets:select(?CAPS, [{{{Cap, '$1'}, '$2'}, [], [{{'$1', '$2'}}]}])
    catch error:badarg -> []
    end.

holds_all(Id, Required) ->
    case ets:lookup(?AGENTS, Id) of
        [{Id, _Pid, _Kind, Caps, _MRef, _W}] -> lists:all(fun(C) -> lists:member(C, Caps) end, Required);
        [] -> false
    end.
