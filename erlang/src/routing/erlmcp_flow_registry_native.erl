%% @private
%% @doc The OTP-native registry backend: names live in the registry's own
%% agents table (`erlmcp_flow_agents', a protected ETS set with
%% read_concurrency), so claiming a name is the registry's insert and looking
%% one up is a direct ETS read in the caller.
-module(erlmcp_flow_registry_native).
-behaviour(erlmcp_flow_registry_backend).

%% erlmcp_flow_registry_backend callbacks
-export([register_name/2]).
-export([unregister_name/2]).
-export([whereis_name/1]).
-export([register_capabilities/1]).

-spec register_name(binary(), pid()) -> ok | {error, already_registered}.
register_name(AgentId, _Pid) ->
    case ets:member(erlmcp_flow_registry:agents_table(), AgentId) of
        true -> {error, already_registered};
        false -> ok
    end.

-spec unregister_name(binary(), pid()) -> ok.
unregister_name(_AgentId, _Pid) ->
    ok.

-spec whereis_name(binary()) -> pid() | undefined.
whereis_name(AgentId) ->
    erlmcp_flow_registry:lookup_pid(AgentId).

-spec register_capabilities([binary()]) -> ok.
register_capabilities(_Caps) ->
    ok.
