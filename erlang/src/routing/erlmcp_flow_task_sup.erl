%% @private
%% @doc Supervisor of the processes that wait for the answers of tasks routed
%% with `erlmcp_flow:route_task/2'. Each child is temporary: it lives for one
%% task.
-module(erlmcp_flow_task_sup).
-behaviour(supervisor).

%% API
-export([start_link/0]).
-export([start_task/1]).

%% supervisor callbacks
-export([init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc Starts the waiter of one dispatched-to-be task; `{error,
%% not_started}' when this supervisor is not running (the application
%% stopping under the caller).
-spec start_task(erlmcp_flow_task:job()) -> {ok, pid()} | {error, term()}.
start_task(Job) ->
    try supervisor:start_child(?MODULE, [Job])
    catch exit:_ -> {error, not_started}
    end.

%% @private
-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    SupFlags = #{strategy => simple_one_for_one, intensity => 0},
    Child = #{id => erlmcp_flow_task,
              start => {erlmcp_flow_task, start_link, []},
              restart => temporary,
              %% a waiter traps exits: told to stop, it cancels its task and
              %% answers reply_to before it goes
              shutdown => 1000},
    {ok, {SupFlags, [Child]}}.
