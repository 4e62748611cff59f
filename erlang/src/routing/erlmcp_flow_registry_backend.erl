%% @private
%% @doc The behaviour of a registry name backend.
%%
%% The registry (`erlmcp_flow_registry') always keeps capabilities, kinds and
%% monitors in its own ETS tables; a backend owns only the name of each agent:
%% how an id is claimed for a pid, released, and looked up. Two backends exist:
%% `erlmcp_flow_registry_native' (ETS, the default) and
%% `erlmcp_flow_registry_gproc' (gproc `n' keys). The configuration's
%% `registry => #{backend => native | gproc | auto}' picks one: `gproc'
%% requires the gproc application to be running, `auto' takes gproc when it
%% runs and native otherwise.
-module(erlmcp_flow_registry_backend).

%% API
-export([select/1]).
-export([gproc_running/0]).

%% Called by the registry server before it records the agent. A name that
%% `Pid' itself holds already (it registers again after a registry restart)
%% is `ok'.
-callback register_name(AgentId :: binary(), Pid :: pid()) ->
    ok | {error, already_registered}.
%% Called by the registry server on unregistration and on the agent's death.
-callback unregister_name(AgentId :: binary(), Pid :: pid()) -> ok.
%% Called by any process; must not go through the registry server.
-callback whereis_name(AgentId :: binary()) -> pid() | undefined.
%% Called by an agent process about itself, for backends whose properties
%% only the owner may register.
-callback register_capabilities([binary()]) -> ok.

%% @doc The backend module for the configured choice, or why there is none.
-spec select(native | gproc | auto) -> {ok, module()} | {error, {gproc_not_running, gproc}}.
select(native) ->
    {ok, erlmcp_flow_registry_native};
select(gproc) ->
    case gproc_running() of
        true -> {ok, erlmcp_flow_registry_gproc};
        false -> {error, {gproc_not_running, gproc}}
    end;
select(auto) ->
    case gproc_running() of
        true -> {ok, erlmcp_flow_registry_gproc};
        false -> {ok, erlmcp_flow_registry_native}
    end.

%% @doc Whether the gproc application runs in this node.
-spec gproc_running() -> boolean().
gproc_running() ->
    lists:keymember(gproc, 1, application:which_applications()).
