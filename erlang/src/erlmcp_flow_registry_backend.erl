%% @private
%% @doc The behaviour of a registry name backend.
%%
%% The registry (`erlmcp_flow_registry') always keeps capabilities, kinds and
%% monitors in its own ETS tables; a backend owns only the name of each agent:
%% how an id is claimed for a pid, released, and looked up. Two backends exist:
%% `erlmcp_flow_registry_native' (ETS, the default) and
%% `erlmcp_flow_registry_gproc' (gproc `n' keys, chosen when the gproc
%% application is running).
-module(erlmcp_flow_registry_backend).

%% API
-export([select/0]).

%% Called by the registry server before it records the agent.
-callback register_name(AgentId :: binary(), Pid :: pid()) ->
    ok | {error, already_registered}.
%% Called by the registry server on unregistration and on the agent's death.
-callback unregister_name(AgentId :: binary(), Pid :: pid()) -> ok.
%% Called by any process; must not go through the registry server.
-callback whereis_name(AgentId :: binary()) -> pid() | undefined.
%% Called by an agent process about itself, for backends whose properties
%% only the owner may register.
-callback register_capabilities([binary()]) -> ok.

%% @doc The backend for this node: gproc when its application runs.
-spec select() -> module().
select() ->
    case lists:keymember(gproc, 1, application:which_applications()) of
        true -> erlmcp_flow_registry_gproc;
        false -> erlmcp_flow_registry_native
    end.
