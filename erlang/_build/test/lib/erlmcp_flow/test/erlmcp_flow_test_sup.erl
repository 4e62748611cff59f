%% A supervisor of the user's kind, for child specs under test: started
%% with its flags and children, unlinked from the test process.
-module(erlmcp_flow_test_sup).
-behaviour(supervisor).

-export([start/2, stop/1]).
-export([init/1]).

start(Flags, Children) ->
    case supervisor:start_link(?MODULE, {Flags, Children}) of
        {ok, Sup} -> unlink(Sup), {ok, Sup};
        Other -> Other
    end.

stop(Sup) ->
    MRef = erlang:monitor(process, Sup),
    exit(Sup, shutdown),
    receive {'DOWN', MRef, process, Sup, _} -> ok end.

init({Flags, Children}) ->
    {ok, {Flags, Children}}.
