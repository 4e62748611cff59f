%% @private
%% @doc The gproc registry backend, used when the gproc application runs in
%% the node (erlmcp's own registry).
%%
%% Each agent's name is the gproc key `{n, l, {flow_agent, Id}}', registered
%% on the agent's behalf with `gproc:reg_other/3' (gproc only lets a process
%% other than the owner register `n', `a', `r' and `rc' keys). The capability
%% properties `{p, l, {flow_capability, Cap}}' can only be registered by the
%% owner, so `erlmcp_flow_agent' processes register their own through
%% `register_capabilities/1'. gproc is not a build dependency: the calls below
%% go through a module held in a variable, so xref and dialyzer stay clean on
%% nodes without gproc, and this module is only selected where gproc runs
%% (`registry => #{backend => gproc | auto}').
-module(erlmcp_flow_registry_gproc).
-behaviour(erlmcp_flow_registry_backend).

%% erlmcp_flow_registry_backend callbacks
-export([register_name/2]).
-export([unregister_name/2]).
-export([whereis_name/1]).
-export([register_capabilities/1]).

-define(GPROC, (gproc_module())).

gproc_module() -> gproc.

%% gproc keeps a name while its holder lives, whatever happens to the
%% registry: after a registry restart the agent registers again and finds
%% the name its own.
-spec register_name(binary(), pid()) -> ok | {error, already_registered}.
register_name(AgentId, Pid) ->
    try ?GPROC:reg_other(name(AgentId), Pid, undefined) of
        true -> ok
    catch
        error:badarg ->
            case ?GPROC:where(name(AgentId)) of
                Pid -> ok;
                _ -> {error, already_registered}
            end
    end.

-spec unregister_name(binary(), pid()) -> ok.
unregister_name(AgentId, Pid) ->
    %% gproc drops the name itself when the holder dies; only a live holder
    %% of this very name is unregistered, so another pid's claim is never touched.
    case ?GPROC:where(name(AgentId)) of
        Pid ->
            try ?GPROC:unreg_other(name(AgentId), Pid) of
                true -> ok
            catch
                error:badarg -> ok
            end;
        _ ->
            ok
    end.

-spec whereis_name(binary()) -> pid() | undefined.
whereis_name(AgentId) ->
    ?GPROC:where(name(AgentId)).

-spec register_capabilities([binary()]) -> ok.
register_capabilities(Caps) ->
    lists:foreach(
      fun(Cap) ->
              try ?GPROC:reg({p, l, {flow_capability, Cap}}) of
                  true -> ok
              catch
                  error:badarg -> ok %% already held by this process
              end
      end, Caps).

name(AgentId) -> {n, l, {flow_agent, AgentId}}.
