%% @private
%% @doc Keeps a process registered across registry restarts: an
%% `erlmcp_flow_agent' or an `erlmcp_flow_swarm' coordinator registers itself
%% here, watches the registry, and registers again once a restarted registry
%% answers.
-module(erlmcp_flow_registration).

%% API
-export([register/3]).
-export([registry_down/0]).
-export([reregister/3]).

%% How long to wait before trying again while the registry comes back.
-define(RETRY_MS, 100).

-type kind() :: agent | swarm.

%% @doc Registers the calling process as `Id' with `Caps' and monitors the
%% registry: the monitor's reference, or why not.
-spec register(kind(), erlmcp_flow:agent_id(), [erlmcp_flow:capability()]) ->
          {ok, reference()} | {error, term()}.
register(Kind, Id, Caps) ->
    case whereis(erlmcp_flow_registry) of
        undefined ->
            {error, not_started};
        Registry ->
            MRef = erlang:monitor(process, Registry),
            case register_self(Kind, Id, Caps) of
                ok ->
                    {ok, MRef};
                {error, _} = E ->
                    erlang:demonitor(MRef, [flush]),
                    E
            end
    end.

%% @doc To call on the registry monitor's `DOWN': a `reregister' message
%% comes to the calling process shortly.
-spec registry_down() -> ok.
registry_down() ->
    _ = erlang:send_after(?RETRY_MS, self(), reregister),
    ok.

%% @doc To call on `reregister': registered again (`{ok, MRef}'), `later'
%% when the registry is still on its way back (another `reregister' comes),
%% or `{error, Reason}' when the registry refuses.
-spec reregister(kind(), erlmcp_flow:agent_id(), [erlmcp_flow:capability()]) ->
          {ok, reference()} | later | {error, term()}.
reregister(Kind, Id, Caps) ->
    case register(Kind, Id, Caps) of
        {error, Busy} when Busy =:= not_started; element(1, Busy) =:= registry_down ->
            ok = registry_down(),
            later;
        Other ->
            Other
    end.

register_self(agent, Id, Caps) ->
    case erlmcp_flow_registry:register_agent(Id, self(), Caps) of
        %% gproc lets only the owner of a property register it
        ok -> (erlmcp_flow_registry:backend()):register_capabilities(Caps);
        {error, _} = E -> E
    end;
register_self(swarm, Id, Caps) ->
    erlmcp_flow_registry:register_swarm(Id, self(), Caps).
