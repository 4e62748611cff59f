%% @private
%% @doc MCP servers as agents: the tools' descriptions
%% (`erlmcp_flow_mcp_tools'), the manager (`erlmcp_flow_mcp': the servers of
%% the configuration, the HTTP sessions) and a supervisor of one
%% `erlmcp_flow_mcp_agent' per server (temporary: an agent restarts its own
%% server with backoff; `unregister_server/1' stops it for good).
-module(erlmcp_flow_mcp_sup).
-behaviour(supervisor).

-export([start_link/0]).
-export([start_agent_sup/0]).
-export([init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, top).

-spec start_agent_sup() -> {ok, pid()} | {error, term()}.
start_agent_sup() ->
    supervisor:start_link({local, erlmcp_flow_mcp_agent_sup}, ?MODULE, agents).

-spec init(top | agents) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(top) ->
    {ok, {#{strategy => one_for_all, intensity => 5, period => 10},
          [#{id => erlmcp_flow_mcp_tools, start => {erlmcp_flow_mcp_tools, start_link, []}},
           #{id => erlmcp_flow_mcp_agent_sup, start => {?MODULE, start_agent_sup, []},
             type => supervisor},
           #{id => erlmcp_flow_mcp, start => {erlmcp_flow_mcp, start_link, []}}]}};
init(agents) ->
    {ok, {#{strategy => simple_one_for_one, intensity => 10, period => 10},
          [#{id => erlmcp_flow_mcp_agent, start => {erlmcp_flow_mcp_agent, start_link, []},
             restart => temporary, shutdown => 5000}]}}.
