%% The cross-origin and DNS-rebinding rule of the HTTP endpoints, case by
%% case (the listeners' own tests send such requests over real sockets).
-module(erlmcp_flow_http_origin_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LOOP, #{ip => {127, 0, 0, 1}}).
-define(WIDE, #{ip => {0, 0, 0, 0}, allowed_origins => [<<"https://app.example">>]}).

no_origin_is_a_program_test() ->
    ?assert(erlmcp_flow_http_origin:allowed(?LOOP, [])),
    ?assert(erlmcp_flow_http_origin:allowed(#{ip => loopback}, [{<<"host">>, <<"localhost:8080">>}])),
    ?assert(erlmcp_flow_http_origin:allowed(?WIDE, [{<<"host">>, <<"flow.example">>}])).

a_loopback_listener_wants_a_loopback_host_test() ->
    ?assertNot(erlmcp_flow_http_origin:allowed(?LOOP, [{<<"host">>, <<"rebound.example">>}])),
    ?assert(erlmcp_flow_http_origin:allowed(?LOOP, [{<<"host">>, <<"[::1]:80">>}])),
    ?assertNot(erlmcp_flow_http_origin:allowed(?LOOP, [{<<"host">>, <<"[zz">>}])).

origins_test() ->
    Local = [{<<"origin">>, <<"http://localhost:3000">>}],
    ?assert(erlmcp_flow_http_origin:allowed(?LOOP, Local)),
    %% a wide listener lets in only the origins it names
    ?assertNot(erlmcp_flow_http_origin:allowed(?WIDE, Local)),
    ?assert(erlmcp_flow_http_origin:allowed(?WIDE, [{<<"origin">>, <<"https://app.example">>}])),
    ?assertNot(erlmcp_flow_http_origin:allowed(?LOOP, [{<<"origin">>, <<"https://evil.example">>}])),
    %% two Origin headers: refused, whatever they say
    ?assertNot(erlmcp_flow_http_origin:allowed(?WIDE, [{<<"origin">>, <<"https://app.example">>},
                                                        {<<"origin">>, <<"https://app.example">>}])),
    %% what is no URL names no host
    [?assertNot(erlmcp_flow_http_origin:allowed(?LOOP, [{<<"origin">>, Bad}]))
     || Bad <- [<<"null">>, <<"http://[zz">>, <<"http://a", 255>>, <<>>]].
