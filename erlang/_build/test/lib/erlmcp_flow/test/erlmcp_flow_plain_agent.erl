%% The smallest agent: handle_task/2 only.
-module(erlmcp_flow_plain_agent).
-behaviour(erlmcp_flow_agent).

-export([init/1, handle_task/2]).

init(Prefix) -> {ok, Prefix}.

handle_task(#{input := X}, Prefix) -> {ok, {Prefix, X}, Prefix};
handle_task(_Task, Prefix) -> {error, no_input, Prefix}.
