%% @private
%% @doc A call to one of the application's named servers (on this node, or
%% `{Name, Node}' on another) that never exits its caller: a server that is
%% not running, or dies or is late, answers `{error, not_started}'.
-module(erlmcp_flow_call).

-export([call/3]).

-spec call(atom() | {atom(), node()}, term(), timeout()) -> term() | {error, not_started}.
call(Name, Request, Timeout) ->
    try gen_server:call(Name, Request, Timeout)
    catch exit:_ -> {error, not_started}
    end.
