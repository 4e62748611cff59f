%% A stand-in for erlmcp's registry (apps/erlmcp_core/src/erlmcp_registry.erl
%% at seanchatmangpt/erlmcp 1356e12d), with the functions the bridge
%% (erlmcp_flow_erlmcp) calls and their answers there: find_server/1
%% ({ok, {Pid, Config}} | {error, not_found}), list_servers/0 ([{Id, {Pid,
%% Config}}]), register_transport/3 (ok, ok again for the same pid,
%% {error, already_registered} for another) and unregister_transport/1
%% (ok, known or not). As erlmcp's (gproc names), a server or transport is
%% forgotten when its process dies. Test code only; docs/agents.md records
%% the comparison with the real module.
-module(erlmcp_registry).
-behaviour(gen_server).

-export([start/0, stop/0, add_server/3, transports/0]).
-export([find_server/1, list_servers/0, register_transport/3, unregister_transport/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

stop() ->
    gen_server:stop(?MODULE).

add_server(Id, Pid, Config) ->
    gen_server:call(?MODULE, {add_server, Id, Pid, Config}).

transports() ->
    gen_server:call(?MODULE, transports).

find_server(Id) ->
    gen_server:call(?MODULE, {find_server, Id}).

list_servers() ->
    gen_server:call(?MODULE, list_servers).

register_transport(Id, Pid, Config) ->
    gen_server:call(?MODULE, {register_transport, Id, Pid, Config}).

unregister_transport(Id) ->
    gen_server:call(?MODULE, {unregister_transport, Id}).

init([]) ->
    {ok, #{servers => #{}, transports => #{}}}.

handle_call({add_server, Id, Pid, Config}, _From, #{servers := S} = St) ->
    _ = erlang:monitor(process, Pid),
    {reply, ok, St#{servers := S#{Id => {Pid, Config}}}};
handle_call({find_server, Id}, _From, #{servers := S} = St) ->
    {reply, case S of #{Id := V} -> {ok, V}; #{} -> {error, not_found} end, St};
handle_call(list_servers, _From, #{servers := S} = St) ->
    {reply, maps:to_list(S), St};
handle_call({register_transport, Id, Pid, Config}, _From, #{transports := T} = St) ->
    case T of
        #{Id := {Pid, _}} ->
            {reply, ok, St};
        #{Id := _} ->
            {reply, {error, already_registered}, St};
        #{} ->
            _ = erlang:monitor(process, Pid),
            {reply, ok, St#{transports := T#{Id => {Pid, Config}}}}
    end;
handle_call({unregister_transport, Id}, _From, #{transports := T} = St) ->
    {reply, ok, St#{transports := maps:remove(Id, T)}};
handle_call(transports, _From, #{transports := T} = St) ->
    {reply, T, St}.

handle_cast(_Msg, St) ->
    {noreply, St}.

handle_info({'DOWN', _, process, Pid, _}, #{servers := S, transports := T} = St) ->
    Alive = fun(_, {P, _}) -> P =/= Pid end,
    {noreply, St#{servers := maps:filter(Alive, S), transports := maps:filter(Alive, T)}};
handle_info(_Info, St) ->
    {noreply, St}.
