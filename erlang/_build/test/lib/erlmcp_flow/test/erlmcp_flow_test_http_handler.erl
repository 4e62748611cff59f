%% A handler for erlmcp_flow_http tests: /crash crashes, /block waits for
%% the test to let it go, anything else answers 200 with the path.
-module(erlmcp_flow_test_http_handler).

-export([handle/4]).

handle(_Method, <<"/crash">>, _Headers, _Body) ->
    error(handler_crashed);
handle(_Method, <<"/block">>, _Headers, _Body) ->
    persistent_term:get({?MODULE, test}) ! {blocked, self()},
    receive release -> {200, "text/plain", <<"released">>} end;
handle(Method, Path, _Headers, Body) ->
    {200, "text/plain", iolist_to_binary([io_lib:format("~p ", [Method]), Path, " ", Body])}.
