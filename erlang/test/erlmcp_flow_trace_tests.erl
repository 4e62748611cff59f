-module(erlmcp_flow_trace_tests).

-include_lib("eunit/include/eunit.hrl").

new_context_test() ->
    #{trace_id := T, span_id := S, trace_flags := F} = erlmcp_flow_trace:new_context(),
    ?assertMatch({match, _}, re:run(T, "^[0-9a-f]{32}$")),
    ?assertMatch({match, _}, re:run(S, "^[0-9a-f]{16}$")),
    ?assertEqual(1, F),
    ?assertNotEqual(T, maps:get(trace_id, erlmcp_flow_trace:new_context())).
