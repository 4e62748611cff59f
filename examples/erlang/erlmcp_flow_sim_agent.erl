%% @doc A simulated agent for demos, load tests and benchmarks: it answers
%% each task after a simulated latency that grows with its own load, and fails
%% a given share of tasks. Tasks overlap (timers, not sleeps), so an agent
%% with many tasks in flight gets slower, as real agents do.
%%
%% Profile keys (all optional):
%% <ul>
%% <li>`mean_ms' (10): latency with nothing else in flight;</li>
%% <li>`jitter' (0.2): each latency is scaled by a uniform factor in
%%   [1 - jitter, 1 + jitter];</li>
%% <li>`load_factor' (0.2): each task already in flight adds this share of
%%   `mean_ms';</li>
%% <li>`fail_rate' (0.0): share of tasks answered `{error, simulated_failure}';</li>
%% <li>`seed' (from the pid): seed of the agent's own random stream.</li>
%% </ul>
%%
%% `set_profile(Agent, Changes)' changes `mean_ms', `jitter', `load_factor' or
%% `fail_rate' of a running agent (its tasks in flight keep their latency):
%% an agent that slows down or recovers while traffic flows.
-module(erlmcp_flow_sim_agent).
-behaviour(erlmcp_flow_agent).

%% API
-export([start_link/3]).
-export([start_link/1]).
-export([set_profile/2]).

%% erlmcp_flow_agent callbacks
-export([init/1]).
-export([handle_task/3]).
-export([handle_info/2]).

-export_type([profile/0]).

-type profile() :: #{mean_ms => number(), jitter => float(), load_factor => number(),
                     fail_rate => float(), seed => integer()}.

%% @doc Starts a simulated agent registered as `AgentId' with `Capabilities'.
-spec start_link(erlmcp_flow:agent_id(), [erlmcp_flow:capability()], profile()) ->
          {ok, pid()} | {error, term()}.
start_link(AgentId, Capabilities, Profile) ->
    erlmcp_flow_agent:start_link(AgentId, Capabilities, ?MODULE, Profile).

%% @doc Starts an unregistered simulated agent (e.g. a swarm member).
-spec start_link(profile()) -> {ok, pid()} | {error, term()}.
start_link(Profile) ->
    erlmcp_flow_agent:start_link(?MODULE, Profile).

%% @doc Changes the profile of a running simulated agent for its next tasks.
-spec set_profile(pid(), profile()) -> ok.
set_profile(Agent, Changes) when is_map(Changes) ->
    Agent ! {set_profile, maps:with([mean_ms, jitter, load_factor, fail_rate], Changes)},
    ok.

%% @private
-spec init(profile()) -> {ok, map()}.
init(Profile) ->
    Seed = maps:get(seed, Profile, erlang:phash2(self())),
    {ok, #{mean_ms => maps:get(mean_ms, Profile, 10),
           jitter => maps:get(jitter, Profile, 0.2),
           load_factor => maps:get(load_factor, Profile, 0.2),
           fail_rate => maps:get(fail_rate, Profile, 0.0),
           in_flight => 0,
           rand => rand:seed_s(exsss, Seed)}}.

%% @private
-spec handle_task(erlmcp_flow:task(), erlmcp_flow_agent:task_ctx(), map()) -> {noreply, map()}.
handle_task(Task, Ctx, #{mean_ms := Mean, jitter := J, load_factor := LF, fail_rate := FR,
                         in_flight := N, rand := R0} = S) ->
    {U1, R1} = rand:uniform_s(R0),
    {U2, R2} = rand:uniform_s(R1),
    Scale = 1 + J * (2 * U1 - 1),
    Latency = max(0, round(Mean * (1 + LF * N) * Scale)),
    Result = case U2 < FR of
                 true -> {error, simulated_failure};
                 false -> {ok, #{echo => Task, latency_ms => Latency}}
             end,
    erlang:send_after(Latency, self(), {sim_done, Ctx, Result}),
    {noreply, S#{in_flight := N + 1, rand := R2}}.

%% @private
-spec handle_info(term(), map()) -> {ok, map()}.
handle_info({sim_done, Ctx, Result}, #{in_flight := N} = S) ->
    ok = erlmcp_flow_agent:reply(Ctx, Result),
    {ok, S#{in_flight := N - 1}};
handle_info({set_profile, Changes}, S) ->
    {ok, maps:merge(S, Changes)};
handle_info(_Msg, S) ->
    {ok, S}.
