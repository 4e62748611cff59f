%% The fuzz harness: random and targeted terms into every exported function
%% of the public modules and of the raw NIF, with PropEr. Every call must
%% return a value, never raise, never take the node down; afterwards nothing
%% leaks (no load, no open span, no process, the registry alive).
%%
%% CI runs a few thousand calls (`erlmcp_flow_fuzz_tests'). A long run:
%%
%%     make fuzz FUZZ_CALLS=200000
%%
%% The generators favour what broke before: integers at the edges of 2^32
%% and 2^64 (times), floats at the edge of the float range, binaries just
%% past each documented limit, improper lists, deep terms, remote pids.
%% They keep every wait short: the delays and timeouts they give are small
%% or invalid, never valid and long, so that a run measures robustness and
%% not patience.
-module(erlmcp_flow_fuzzer).

-include_lib("proper/include/proper.hrl").

-export([run/1]).
-export([prop_public_api/0, prop_nif/0]).

%% @doc Runs `Calls' random calls in all (half on each property), with the
%% application started; true when every call answered and nothing leaked.
-spec run(pos_integer()) -> boolean().
run(Calls) ->
    Dir = tmp_dir(),
    put(fuzz_dir, Dir),
    %% relative paths the fuzzer makes up (a model file named by any_term())
    %% land in the scratch directory, never in the repository
    {ok, Cwd} = file:get_cwd(),
    ok = file:set_cwd(Dir),
    try fuzz(Calls, Dir)
    after file:set_cwd(Cwd)
    end.

fuzz(Calls, Dir) ->
    Apps = erlmcp_flow_test_util:start(),
    Agents = [erlmcp_flow_test_util:echo_agent() || _ <- lists:seq(1, 4)],
    put(fuzz_agents, Agents),
    [ok = erlmcp_flow:register_agent(<<"fuzz-", (integer_to_binary(I))/binary>>, P, [<<"x">>])
     || {I, P} <- lists:zip(lists:seq(1, 4), Agents)],
    {ok, Router} = erlmcp_flow_nif:router_new(#{clock => manual}),
    put(fuzz_router, Router),
    Procs = length(processes()),
    Opts = [{numtests, Calls div 2}, {max_size, 30}, {to_file, user}, quiet],
    Ok = proper:quickcheck(prop_public_api(), Opts) andalso proper:quickcheck(prop_nif(), Opts),
    flush(),
    erlmcp_flow_test_util:wait_until(
      fun() ->
              #{in_flight := F, correlation_open := O} = erlmcp_flow:stats(),
              F =:= 0 andalso O =:= 0
      end),
    Clean = is_pid(whereis(erlmcp_flow_registry))
        andalso length(processes()) =< Procs + 10,
    [P ! stop || P <- Agents],
    erlmcp_flow_test_util:stop_drained(Apps),
    _ = file:del_dir_r(Dir),
    Ok andalso Clean.

%%--------------------------------------------------------------------
%% Properties

prop_public_api() ->
    ?FORALL({M, F, Args}, public_call(), answers(M, F, Args)).

prop_nif() ->
    ?FORALL({M, F, Args}, nif_call(), answers(M, F, Args)).

%% The call returns whatever it returns: an exception is a failure.
answers(M, F, Args) ->
    try apply(M, F, Args) of
        _ -> flush(), true
    catch
        Class:Reason:Stack ->
            io:format(user, "~p:~p/~b raised ~p:~p~n  args ~P~n  ~p~n",
                      [M, F, length(Args), Class, Reason, Args, 12, Stack]),
            false
    end.

%% Answers of agents and routed tasks that came back to this process.
flush() ->
    receive
        {task_seen, _, _, _} -> flush();
        {erlmcp_flow_result, _, _} -> flush();
        {cancelled, _, _} -> flush()
    after 0 ->
        ok
    end.

%%--------------------------------------------------------------------
%% Calls

public_call() ->
    oneof([{erlmcp_flow, execute, [task(), requirements()]},
           {erlmcp_flow, execute, [task(), requirements(), opts()]},
           {erlmcp_flow, route_task, [task(), route_requirements()]},
           {erlmcp_flow, register_agent, [id(), pid_term(), caps()]},
           {erlmcp_flow, register_agent, [id(), pid_term(), caps(), agent_opts()]},
           {erlmcp_flow, register_swarm, [id(), pid_term(), caps()]},
           {erlmcp_flow, unregister_agent, [id()]},
           {erlmcp_flow, find_agent, [id()]},
           {erlmcp_flow, find_agents_by_capability, [cap()]},
           {erlmcp_flow, query_agents, [caps()]},
           {erlmcp_flow, get_agent_load, [id()]},
           {erlmcp_flow, agent_stats, [id()]},
           {erlmcp_flow, stats, []},
           {erlmcp_flow, explain, [requirements()]},
           {erlmcp_flow_agent, reply, [any_term(), any_term()]},
           {erlmcp_flow_telemetry, execute, [list(atom_term()), any_term(), any_term()]},
           {erlmcp_flow_circuit_breaker, allow_request, [id()]},
           {erlmcp_flow_circuit_breaker, record_result, [id(), result()]},
           {erlmcp_flow_circuit_breaker, record_result, [id(), result(), fuzz_int()]},
           {erlmcp_flow_circuit_breaker, state, [id()]},
           {erlmcp_flow_circuit_breaker, reset, [id()]},
           {erlmcp_flow_correlation_tracker, parse_traceparent, [header()]},
           {erlmcp_flow_correlation_tracker, format_traceparent, [any_term()]},
           {erlmcp_flow_correlation_tracker, validate_tracestate, [header()]},
           {erlmcp_flow_correlation_tracker, get_trace_chain, [hex_or_garbage(32)]},
           {erlmcp_flow_correlation_tracker, lookup, [hex_or_garbage(16)]},
           {erlmcp_flow_correlation_tracker, generate_trace_id, []},
           {erlmcp_flow_correlation_tracker, generate_span_id, []},
           {erlmcp_flow_q_learning, load, [read_path()]},
           {erlmcp_flow_q_learning, get_q_table, []},
           {erlmcp_flow_q_learning, explain, [requirements()]},
           {erlmcp_flow_metrics, stats, []},
           {erlmcp_flow_prometheus, render, []},
           {erlmcp_flow, memory, []},
           {erlmcp_flow_jsonrpc, decode, [json_text()]},
           {erlmcp_flow_jsonrpc, decode, [json_text(), any_term()]},
           {erlmcp_flow_jsonrpc, encode, [any_term()]},
           {erlmcp_flow_jsonrpc, encode_json, [any_term()]},
           {erlmcp_flow_jsonrpc, decode_json, [json_text()]},
           {erlmcp_flow_jsonrpc, decode_json, [json_text(), any_term()]},
           {erlmcp_flow_rpc, handle, [rpc_method(), any_term(), #{transport => http}]},
           {erlmcp_flow_erlmcp, register_server, [any_term(), any_term()]},
           {erlmcp_flow_transport, port, [any_term()]},
           {erlmcp_flow, nodes, []},
           {erlmcp_flow_failure_detector, phi, [any_term()]},
           {erlmcp_flow_failure_detector, suspected, []},
           {erlmcp_flow_byzantine_detector, detect_partitions, []},
           {erlmcp_flow_byzantine_detector, is_blacklisted, [oneof([id(), atom_term(), any_term()])]},
           {erlmcp_flow_byzantine_detector, unblacklist, [oneof([id(), any_term()])]},
           {erlmcp_flow_byzantine_detector, reputation, [oneof([id(), any_term()])]},
           {erlmcp_flow_quorum, tally, [any_term(), any_term()]},
           {erlmcp_flow_quorum, plurality, [any_term()]},
           {erlmcp_flow_mcp, register_server, [oneof([id(), any_term()]),
                                               oneof([#{command => [<<"/nonexistent/mcp-server">>]},
                                                      #{url => any_term()}, #{command => any_term()}, any_term()]),
                                               oneof([#{}, #{capabilities => any_term()}, any_term()])]},
           {erlmcp_flow_mcp, unregister_server, [any_term()]},
           {erlmcp_flow_mcp, declare_tool, [oneof([id(), any_term()]), any_term()]},
           {erlmcp_flow_mcp_tools, tool, [oneof([id(), any_term()])]},
           {erlmcp_flow_mcp_tools, idempotent, [oneof([id(), any_term()])]},
           {erlmcp_flow_mcp_server, initialize, [any_term()]},
           {erlmcp_flow_mcp_server, call, [oneof([<<"ping">>, <<"tools/list">>, <<"tools/call">>, any_binary(), any_term()]),
                                           oneof([#{<<"name">> => oneof([<<"flow_stats">>, <<"nope">>, any_term()]),
                                                    <<"arguments">> => any_term(), <<"_meta">> => any_term()},
                                                  #{<<"cursor">> => any_term()}, any_term()])]},
           {erlmcp_flow_status, document, [oneof([any_term(), status_params()])]},
           {erlmcp_flow_status, explain, [oneof([any_term(), status_params()])]},
           {erlmcp_flow_status, handle, [oneof([<<"/status.json">>, <<"/status/explain.json">>, any_binary(), any_term()]),
                                         oneof([any_binary(), any_term()])]}]).

%% JSON-RPC method names the node serves, and garbage.
rpc_method() ->
    oneof([<<"flow.stats">>, <<"flow.agents">>, <<"flow.explain">>, <<"flow.trace">>,
           <<"flow.route_task">>, <<"flow.unregister_agent">>, <<"flow.register_agent">>,
           any_binary(), any_term()]).

%% Text that is JSON-RPC, nearly, or not at all.
json_text() ->
    oneof([any_binary(),
           <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\",\"id\":1}">>,
           <<"[{\"jsonrpc\":\"2.0\",\"method\":\"m\"},1,[],{}]">>,
           <<"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":[1e400],\"id\":1E400}">>,
           binary:copy(<<"[">>, 200), binary:copy(<<"{\"a\":">>, 100),
           <<"{\"jsonrpc\":\"2.0\",\"result\":{\"a\":[1,2,{\"b\":null}]},\"id\":\"x\"}">>,
           any_term()]).

nif_call() ->
    R = router_term(),
    oneof([{erlmcp_flow_nif, router_new, [router_opts()]},
           {erlmcp_flow_nif, clock_advance, [R, fuzz_int()]},
           {erlmcp_flow_nif, agent_insert, [R, id(), pid_term(), caps(), kind(), number_term()]},
           {erlmcp_flow_nif, agent_remove, [R, id()]},
           {erlmcp_flow_nif, agent_remove_many, [R, list(id())]},
           {erlmcp_flow_nif, router_stats, [R]},
           {erlmcp_flow_nif, agent_stats, [R, id()]},
           {erlmcp_flow_nif, decide, [R, caps(), strategy(), key(), key(), list(id()), kind(),
                                      oneof([undefined, any_term()])]},
           {erlmcp_flow_nif, has_capacity, [R, caps()]},
           {erlmcp_flow_nif, has_capacity, [R, caps(), list(id()), kind()]},
           {erlmcp_flow_nif, complete, [any_term(), outcome()]},
           {erlmcp_flow_nif, lease_p95, [any_term()]},
           {erlmcp_flow_nif, explain, [R, caps(), key()]},
           {erlmcp_flow_nif, q_table, [R]},
           {erlmcp_flow_nif, q_save, [R, write_path()]},
           {erlmcp_flow_nif, q_load, [R, read_path()]},
           {erlmcp_flow_nif, td_update, [number_term(), number_term(), number_term(),
                                         number_term(), number_term()]},
           {erlmcp_flow_nif, reward, [number_term(), any_term(), number_term(), number_term()]},
           {erlmcp_flow_nif, breaker_allow, [R, id()]},
           {erlmcp_flow_nif, breaker_record, [R, id(), oneof([call, any_term()]), outcome(), fuzz_int()]},
           {erlmcp_flow_nif, breaker_state, [R, id()]},
           {erlmcp_flow_nif, breaker_reset, [R, id()]},
           {erlmcp_flow_nif, parse_traceparent, [header()]},
           {erlmcp_flow_nif, format_traceparent, [hex_or_garbage(32), hex_or_garbage(16), fuzz_int()]},
           {erlmcp_flow_nif, validate_tracestate, [header()]},
           {erlmcp_flow_nif, span_start, [R, oneof([undefined, header()]), any_binary()]},
           {erlmcp_flow_nif, task_start, [R, oneof([undefined, header()]), any_binary(), caps(),
                                          strategy(), key(), key(), list(id()), kind()]},
           {erlmcp_flow_nif, task_complete, [any_term(), any_term()]},
           {erlmcp_flow_nif, ring_build, [R]},
           {erlmcp_flow_nif, span_end, [any_term(), outcome(), oneof([undefined, id()])]},
           {erlmcp_flow_nif, trace_chain, [R, hex_or_garbage(32)]},
           {erlmcp_flow_nif, span_lookup, [R, hex_or_garbage(16)]},
           {erlmcp_flow_nif, correlation_sweep, [R]},
           {erlmcp_flow_nif, export_batch, [R, fuzz_int(), any_term()]},
           {erlmcp_flow_nif, core_memory, []},
           {erlmcp_flow_nif, router_memory, [R]},
           {erlmcp_flow_nif, agent_insert_many, [R, any_term()]},
           {erlmcp_flow_nif, jsonrpc_decode, [json_text(), fuzz_int(), fuzz_int(), fuzz_int()]},
           {erlmcp_flow_nif, jsonrpc_decode_dirty, [json_text(), fuzz_int(), fuzz_int(), fuzz_int()]},
           {erlmcp_flow_nif, jsonrpc_encode, [any_term()]},
           {erlmcp_flow_nif, jsonrpc_encode_dirty, [any_term()]},
           {erlmcp_flow_nif, json_encode, [any_term()]},
           {erlmcp_flow_nif, json_encode_dirty, [any_term()]},
           {erlmcp_flow_nif, json_decode, [json_text(), fuzz_int(), fuzz_int()]},
           {erlmcp_flow_nif, phi_new, [number_term()]},
           {erlmcp_flow_nif, phi_heartbeat, [any_term(), fuzz_int()]},
           {erlmcp_flow_nif, phi_resume, [any_term(), fuzz_int()]},
           {erlmcp_flow_nif, phi_value, [oneof([erlmcp_flow_nif:phi_new(50), any_term()]), fuzz_int()]},
           {erlmcp_flow_nif, vote_key, [oneof([any_binary(), any_term()])]},
           {erlmcp_flow_nif, vote_sign, [any_term(), vote_term()]},
           {erlmcp_flow_nif, vote_verify, [any_term(), vote_term(), any_term()]},
           {erlmcp_flow_nif, vote_sign_dirty, [any_term(), vote_term()]},
           {erlmcp_flow_nif, vote_verify_dirty, [any_term(), vote_term(), any_term()]},
           {erlmcp_flow_nif, replay_guard, [fuzz_int()]},
           {erlmcp_flow_nif, replay_check, [any_term(), vote_term(), fuzz_int()]},
           {erlmcp_flow_nif, recent_traces, [R, fuzz_int()]}]).

%% The status page's query parameters, with values of any kind.
status_params() ->
    ?LET(Pairs, list({oneof([<<"sort">>, <<"limit">>, <<"offset">>, <<"capability">>, <<"order">>,
                             <<"traces">>, <<"capabilities">>, <<"task_class">>]),
                      oneof([any_binary(), <<"p99_us">>, <<"desc">>, <<"-1">>, <<"99999999999">>, any_term()])}),
         maps:from_list(Pairs)).

%% A vote tuple, well formed or not.
vote_term() ->
    oneof([{any_binary(), any_binary(), any_binary(), any_binary(), any_binary(), fuzz_int(), fuzz_int()},
           any_term()]).

%%--------------------------------------------------------------------
%% Generators

%% What breaks validation: the edges of every range.
edge_fuzz_int() ->
    oneof([0, 1, -1, 255, 256, 65535, 65536, 4294967295, 4294967296, 1 bsl 40,
           18446744073709551615, 18446744073709551616, -(1 bsl 63), 1 bsl 1100]).

fuzz_int() -> oneof([edge_fuzz_int(), integer(), choose(0, 2000)]).

number_term() ->
    oneof([fuzz_int(), float(), 1.0e308, -1.0e308, 0.0, -0.0, 5.0e-324, atom_term()]).

atom_term() ->
    oneof([undefined, infinity, nan, true, false, ok, error, 'maybe', any, swarm, agent,
           call, atom()]).

any_binary() ->
    oneof([binary(), <<>>, sized_binary(1024), sized_binary(1025), sized_binary(65537),
           sized_binary(32769)]).

sized_binary(N) ->
    ?LET(B, byte(), binary:copy(<<B>>, N)).

%% Terms of any shape, improper and deep ones included.
any_term() ->
    ?SIZED(S, any_term(S)).

any_term(0) ->
    oneof([fuzz_int(), number_term(), atom_term(), any_binary(), elements(get(fuzz_agents)),
           erlmcp_flow_test_util:remote_pid(), make_ref(), [], {}, #{}]);
any_term(S) ->
    frequency([{4, any_term(0)},
               {1, ?LAZY(list(any_term(S div 3)))},
               {1, ?LAZY(?LET({H, T}, {any_term(S div 3), any_term(0)}, [H | T]))},
               {1, ?LAZY(?LET(L, list(any_term(S div 3)), list_to_tuple(L)))},
               {1, ?LAZY(?LET(L, list({any_term(0), any_term(S div 3)}), maps:from_list(L)))},
               {1, ?LAZY(deep(S))}]).

deep(S) ->
    ?LET(N, choose(1, 200 + S), lists:foldl(fun(_, Acc) -> [Acc] end, x, lists:seq(1, N))).

pid_term() ->
    oneof([elements(get(fuzz_agents)), erlmcp_flow_test_util:remote_pid(),
           any_term(0)]).

id() ->
    oneof([elements([<<"fuzz-1">>, <<"fuzz-2">>, <<"a">>, <<"b">>]), any_binary(), any_term(0)]).

cap() ->
    oneof([elements([<<"x">>, <<"y">>]), any_binary(), any_term(0)]).

caps() ->
    oneof([[], list(cap()), [<<"x">>], any_term()]).

key() ->
    oneof([undefined, any_binary(), any_term(0)]).

kind() -> oneof([agent, swarm, any, any_term(0)]).
strategy() -> oneof([round_robin, least_connections, weighted, consistent_hash, p2c_ewma,
                     q_learning, any_term(0)]).
outcome() -> oneof([ok, error, timeout, down, abandoned, failed, any_term(0)]).
result() -> oneof([{ok, any_term(0)}, {error, any_term(0)}, any_term(0)]).

%% A short time, a time past the VM's limit, or not a time at all.
time_term() ->
    oneof([choose(1, 50), 0, -1, 4294967296, 1 bsl 40, infinity, atom_term(), float()]).
delay_term() ->
    oneof([choose(0, 5), -1, 4294967296, 1 bsl 40, atom_term()]).

header() ->
    oneof([<<"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01">>,
           <<"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE">>,
           binary:copy(<<",">>, 40000), sized_binary(513), any_binary(), any_term(0)]).

hex_or_garbage(N) ->
    oneof([?LET(B, vector(N, elements("0123456789abcdef")), list_to_binary(B)),
           any_binary(), any_term(0)]).

%% Files written go to this run's own directory, and nowhere else.
write_path() ->
    oneof([?LET(B, elements([<<"a">>, <<"b">>, <<"sub/c">>]),
                filename:join(get(fuzz_dir), B)),
           <<>>, any_term(0)]).

%% Files read may be anything readable, devices and directories included.
read_path() ->
    oneof([write_path(), <<"/dev/zero">>, <<"/dev/null">>, <<"/tmp">>, <<"/nonexistent">>]).

task() ->
    oneof([#{}, #{id => any_term(0)}, #{type => any_term(0), id => any_term(0)},
           any_term()]).

requirements() ->
    oneof([#{}, any_term(),
           ?LET(Pairs, list(requirement()), maps:from_list(Pairs))]).

route_requirements() ->
    ?LET(R, requirements(),
         case R of
             #{} -> R#{reply_to => self()};
             _ -> R
         end).

requirement() ->
    oneof([{capabilities, caps()}, {timeout, time_term()}, {strategy, strategy()},
           {sticky_key, key()}, {task_class, any_term(0)}, {idempotent, any_term(0)},
           {traceparent, header()}, {tracestate, header()}, {any_term(0), any_term(0)}]).

opts() ->
    oneof([#{}, any_term(),
           ?LET(Pairs, list(oneof([{timeout, time_term()}, {routing_timeout, time_term()},
                                   {max_retry_attempts, oneof([choose(0, 3), 101, -1,
                                                               atom_term()])},
                                   {base_retry_delay, delay_term()},
                                   {max_retry_delay, delay_term()},
                                   {error_meta, oneof([true, false, any_term(0)])},
                                   {any_term(0), any_term(0)}])),
                maps:from_list(Pairs))]).

agent_opts() ->
    oneof([#{}, #{weight => number_term()}, #{any_term(0) => any_term(0)}, any_term(0)]).

router_opts() ->
    ?LET(Pairs, list(oneof([{consistent_hash_vnodes, fuzz_int()}, {task_classes, fuzz_int()},
                            {window_size, fuzz_int()}, {window_type, oneof([count, time, x])},
                            {max_concurrent, fuzz_int()}, {half_open_max_requests, fuzz_int()},
                            {correlation_max_entries, fuzz_int()}, {export_queue, fuzz_int()},
                            {alpha, number_term()}, {gamma, number_term()},
                            {lazy_ring, oneof([true, false, any_term(0)])},
                            {any_term(0), any_term(0)}])),
         maps:from_list(Pairs)).

router_term() ->
    oneof([get(fuzz_router), erlmcp_flow_registry:router(), any_term(0)]).

tmp_dir() ->
    D = filename:join(["/tmp", "erlmcp_flow_fuzz_" ++ integer_to_list(erlang:unique_integer([positive]))]),
    ok = filelib:ensure_dir(filename:join(D, "x")),
    list_to_binary(D).
