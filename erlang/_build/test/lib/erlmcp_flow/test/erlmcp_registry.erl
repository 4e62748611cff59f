%% A stand-in for erlmcp's registry, written from the interface the bridge
%% uses (erlmcp_flow_erlmcp): a registered process named erlmcp_registry
%% answering find_server/1, list_servers/0 and register_transport/3. Test
%% code only: no live erlmcp node was available to test against.
-module(erlmcp_registry).
-behaviour(gen_server).

-export([start/0, stop/0, add_server/3, transports/0]).
-export([find_server/1, list_servers/0, register_transport/3]).
-export([init/1, handle_call/3, handle_cast/2]).

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

init([]) ->
    {ok, #{servers => #{}, transports => #{}}}.

handle_call({add_server, Id, Pid, Config}, _From, #{servers := S} = St) ->
    {reply, ok, St#{servers := S#{Id => {Pid, Config}}}};
handle_call({find_server, Id}, _From, #{servers := S} = St) ->
    {reply, case S of #{Id := V} -> {ok, V}; #{} -> {error, not_found} end, St};
handle_call(list_servers, _From, #{servers := S} = St) ->
    {reply, maps:to_list(S), St};
handle_call({register_transport, Id, Pid, Config}, _From, #{transports := T} = St) ->
    case T of
        #{Id := _} -> {reply, {error, already_registered}, St};
        #{} -> {reply, ok, St#{transports := T#{Id => {Pid, Config}}}}
    end;
handle_call(transports, _From, #{transports := T} = St) ->
    {reply, T, St}.

handle_cast(_Msg, St) ->
    {noreply, St}.
