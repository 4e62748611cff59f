%% The fuzz harness in CI: a few thousand random and targeted calls into
%% every exported function (see erlmcp_flow_fuzzer). A longer run:
%% `make fuzz FUZZ_CALLS=200000'.
-module(erlmcp_flow_fuzz_tests).

-include_lib("eunit/include/eunit.hrl").

fuzz_test_() ->
    Calls = case os:getenv("FUZZ_CALLS") of
                false -> 4000;
                N -> list_to_integer(N)
            end,
    {timeout, 3600, fun() -> ?assert(erlmcp_flow_fuzzer:run(Calls)) end}.
