%% @private
%% @doc The supervisor of the proxy agents of erlmcp servers
%% (`erlmcp_flow_erlmcp_proxy'), one per server; a proxy whose server dies
%% stops and is not restarted.
-module(erlmcp_flow_erlmcp_sup).
-behaviour(supervisor).

-export([start_link/0]).
-export([start_proxy/3]).
-export([init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec start_proxy(atom() | binary(), pid(), [binary()]) -> {ok, pid()} | {error, term()}.
start_proxy(ServerId, ServerPid, Capabilities) ->
    case supervisor:start_child(?MODULE, [ServerId, ServerPid, Capabilities]) of
        {ok, Pid} -> {ok, Pid};
        {error, {Reason, _Child}} when is_tuple(Reason) -> {error, Reason};
        {error, _} = E -> E
    end.

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    {ok, {#{strategy => simple_one_for_one, intensity => 10, period => 10},
          [#{id => proxy, start => {erlmcp_flow_erlmcp_proxy, start_link, []},
             restart => temporary}]}}.
