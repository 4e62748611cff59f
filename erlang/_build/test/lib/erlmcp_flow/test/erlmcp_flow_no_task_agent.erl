%% A callback module that forgot handle_task: starting it must fail.
-module(erlmcp_flow_no_task_agent).

-export([init/1]).

init(_) -> {ok, none}.
