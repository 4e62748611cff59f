%% @doc A bridge to erlmcp's registry: MCP servers registered with erlmcp
%% become routed agents. Optional: erlmcp is not a build dependency (its
%% modules are called by name at run time), and these functions answer
%% `{error, erlmcp_not_running}' when erlmcp's registry is not there.
%%
%% `register_server(ServerId, Capabilities)' finds the server with
%% `erlmcp_registry:find_server(ServerId)' and starts a supervised proxy
%% agent (`erlmcp_flow_erlmcp_proxy') for it. The proxy registers itself as
%% an erlmcp transport (`erlmcp_registry:register_transport(TransportId,
%% self(), #{server_id => ServerId})'), sends MCP's `initialize' request once
%% (protocol version 2025-11-25, `clientInfo' erlmcp_flow) and the
%% `notifications/initialized' notification, then registers as the agent
%% `ServerId' (as a binary) with `Capabilities'. A task `#{<<"tool">> :=
%% Name, <<"arguments">> := Args}' becomes a `tools/call' request sent as
%% `ServerPid ! {mcp_message, TransportId, Json}'; the reply arrives as
%% `{mcp_response, ServerId, Json}', matched by its JSON-RPC id: the result
%% answers the task, a JSON-RPC error answers `{error, {mcp_error, Code,
%% Message}}'. When the server dies the agent goes away as any agent does.
-module(erlmcp_flow_erlmcp).

-export([register_server/2]).
-export([register_all/1]).
%% for erlmcp_flow_erlmcp_proxy
-export([registry/0]).

%% erlmcp's registry module (called by name: no compile-time dependency)


%% @doc Routes tasks to the erlmcp server `ServerId' as the agent
%% `ServerId' (a binary, or an atom made one) holding `Capabilities'.
-spec register_server(atom() | binary(), [erlmcp_flow:capability()]) ->
          {ok, pid()} | {error, term()}.
register_server(ServerId, Capabilities) when is_list(Capabilities) ->
    case lookup(ServerId) of
        {ok, {Pid, _Config}} when is_pid(Pid) ->
            erlmcp_flow_erlmcp_sup:start_proxy(ServerId, Pid, Capabilities);
        {error, _} = E ->
            E
    end;
register_server(_ServerId, Capabilities) ->
    {error, {badarg, {capabilities, Capabilities}}}.

%% @doc `register_server/2' for every server erlmcp knows, each with the
%% capabilities `CapabilitiesFun(ServerId, Config)' gives it: the result of
%% each, by server.
-spec register_all(fun((term(), term()) -> [erlmcp_flow:capability()])) ->
          [{term(), {ok, pid()} | {error, term()}}] | {error, erlmcp_not_running}.
register_all(CapabilitiesFun) when is_function(CapabilitiesFun, 2) ->
    case call(list_servers, []) of
        {error, erlmcp_not_running} = E ->
            E;
        Servers when is_list(Servers) ->
            [{Id, register_server(Id, CapabilitiesFun(Id, Config))} || {Id, {_Pid, Config}} <- Servers]
    end.

lookup(ServerId) ->
    case call(find_server, [ServerId]) of
        {ok, {_, _}} = Found -> Found;
        {error, not_found} -> {error, {server_not_found, ServerId}};
        {error, _} = E -> E
    end.

%% A call into erlmcp's registry, if it is running.
call(Function, Args) ->
    case code:ensure_loaded(registry()) =:= {module, registry()} andalso whereis(registry()) =/= undefined of
        true -> apply(registry(), Function, Args);
        false -> {error, erlmcp_not_running}
    end.

%% erlmcp's registry module, named at run time: erlmcp is not a build
%% dependency, so xref and dialyzer do not look for it.
-spec registry() -> module().
registry() ->
    list_to_atom("erlmcp_registry").
