%% @doc The JSON-RPC methods a node serves, whatever the transport:
%% `flow.route_task', `flow.agents', `flow.stats', `flow.explain',
%% `flow.trace', `flow.unregister_agent' (and `flow.register_agent' where
%% the transport keeps a connection an agent can be reached through).
%%
%% Routing errors are in the server range, one code per reason, with the
%% Erlang reason as text in `data.reason':
%%
%% <table>
%% <tr><td>-32001</td><td>`no_agents_available'</td></tr>
%% <tr><td>-32002</td><td>`overloaded'</td></tr>
%% <tr><td>-32003</td><td>`{no_available_agent, Attempts}' (every attempt failed)</td></tr>
%% <tr><td>-32004</td><td>`{agent_down, Reason}'</td></tr>
%% <tr><td>-32005</td><td>`{agent_error, Reason}'</td></tr>
%% <tr><td>-32006</td><td>`{bad_agent_reply, Term}'</td></tr>
%% <tr><td>-32007</td><td>`not_started'</td></tr>
%% <tr><td>-32008</td><td>`flow.register_agent' on a transport that cannot reach an agent</td></tr>
%% <tr><td>-32009</td><td>`execution_timeout' (erlmcp's request timeout)</td></tr>
%% <tr><td>-32010</td><td>`{rejected, Reason}': the agent refused the task as the caller's
%% error; `data' is `{"class": "rejected", "reason": Reason as JSON}' (an MCP tool's
%% result with `isError': `{"class": "rejected", "result": Result}'); a JSON-RPC agent's
%% own error (`-32602', `-32600') is passed on with its code and message</td></tr>
%% <tr><td>-32011</td><td>`draining': this node takes no new task (`erlmcp_flow:drain/1');
%% send it to another node</td></tr>
%% <tr><td>-32013</td><td>`flow.unregister_agent' of an agent another connection (or
%% the node itself) registered; `flow.register_agent' of an id a local agent of the
%% node holds or held (`{reserved, Id}')</td></tr>
%% <tr><td>-32020</td><td>`{byzantine, no_secret}': a quorum asked of a node without a secret</td></tr>
%% <tr><td>-32021</td><td>`{insufficient_agents, Have, Need}' (`on_no_quorum => error')</td></tr>
%% <tr><td>-32022</td><td>`{no_quorum, Votes}' (`on_no_quorum => error')</td></tr>
%% <tr><td>-32602</td><td>`{badarg, _}': the params named in `data.reason'</td></tr>
%% <tr><td>-32603</td><td>`{internal_error, _}', and a result JSON cannot carry</td></tr>
%% </table>
-module(erlmcp_flow_rpc).

-export([handle/3]).
-export([error_code/1]).
-export([jsonable/1]).

%% `conn': the TCP connection's process (the pid its agents are registered
%% under); `permit': asked before a task is routed (HTTP's budget of
%% requests waiting on agents), `ok' or `overloaded'.
-type ctx() :: #{transport := http | tcp | stdio | mcp,
                 traceparent => binary(),
                 tracestate => binary(),
                 conn => pid(),
                 permit => fun(() -> ok | overloaded)}.
-export_type([ctx/0]).

-define(STRATEGIES, [round_robin, least_connections, weighted, consistent_hash, p2c_ewma,
                     q_learning]).

%% @doc Answers one request: `{ok, Result}' or `{error, Code, Message, Data}'.
-spec handle(binary(), term(), ctx()) ->
          {ok, term()} | {error, integer(), binary(), term()}.
handle(Method, Params, _Ctx) when Params =/= undefined, not is_map(Params),
                                   Method =/= <<"flow.stats">> ->
    %% by-position params: no method here takes them
    invalid_params(<<"params must be an object (by name)">>);
handle(<<"flow.route_task">>, Params, Ctx) ->
    route_task(Params, Ctx);
handle(<<"flow.agents">>, Params, _Ctx) ->
    agents(Params);
handle(<<"flow.stats">>, _Params, _Ctx) ->
    case erlmcp_flow:stats() of
        {error, Reason} -> routing_error(Reason);
        Stats -> {ok, jsonable(Stats)}
    end;
handle(<<"flow.explain">>, Params, _Ctx) ->
    case requirements(maps:with([<<"capabilities">>, <<"task_class">>], params_map(Params))) of
        {ok, Req} ->
            case erlmcp_flow:explain(Req) of
                {ok, Explained} -> {ok, jsonable(Explained)};
                {error, Reason} -> routing_error(Reason)
            end;
        {error, _, _, _} = E ->
            E
    end;
handle(<<"flow.trace">>, #{<<"trace_id">> := TraceId}, _Ctx) when is_binary(TraceId) ->
    case erlmcp_flow_correlation_tracker:get_trace_chain(TraceId) of
        {ok, Spans} -> {ok, jsonable(Spans)};
        {error, Reason} -> routing_error(Reason)
    end;
handle(<<"flow.trace">>, _Params, _Ctx) ->
    invalid_params(<<"flow.trace takes {\"trace_id\": \"<32 hex digits>\"}">>);
handle(<<"flow.unregister_agent">>, #{<<"agent_id">> := Id}, Ctx) when is_binary(Id) ->
    case owner(Id, Ctx) of
        ok ->
            case erlmcp_flow:unregister_agent(Id) of
                ok -> {ok, #{unregistered => true}};
                {error, Reason} -> routing_error(Reason)
            end;
        {error, _, _, _} = E ->
            E
    end;
handle(<<"flow.unregister_agent">>, _Params, _Ctx) ->
    invalid_params(<<"flow.unregister_agent takes {\"agent_id\": \"...\"}">>);
handle(<<"flow.register_agent">>, _Params, #{transport := Transport}) ->
    {error, -32008, <<"Agents register over a connection">>,
     #{reason => iolist_to_binary(
                   io_lib:format("flow.register_agent needs a TCP connection the agent's "
                                 "tasks can come back on; this request came over ~s",
                                 [Transport]))}};
handle(Method, _Params, _Ctx) ->
    {error, erlmcp_flow_jsonrpc:code(method_not_found), <<"Method not found">>,
     #{method => Method}}.

%% Who may unregister an agent from outside the node: over TCP, the
%% connection that registered it (and only it); over stdio, the host that
%% launched the node; over HTTP and MCP, nobody (no request owns an agent).
%% An unknown id is answered as unregistering it would (ok).
owner(Id, #{transport := stdio}) ->
    _ = Id,
    ok;
owner(Id, Ctx) ->
    Conn = maps:get(conn, Ctx, none),
    case erlmcp_flow:find_agent(Id) of
        {ok, Conn} -> ok;
        {error, not_found} -> ok;
        {ok, _} -> {error, -32013, <<"Not this connection's agent">>,
                    #{reason => <<"an agent is unregistered only over the connection that "
                                  "registered it">>}};
        {error, Reason} -> routing_error(Reason)
    end.

%% flow.route_task: {"task": {...}, "requirements": {...}}.
route_task(Params, Ctx) ->
    case maps:get(permit, Ctx, fun() -> ok end) of
        Permit when is_function(Permit, 0) ->
            case Permit() of
                ok -> route_task_permitted(Params, Ctx);
                overloaded -> routing_error(overloaded)
            end
    end.

route_task_permitted(Params, Ctx) ->
    P = params_map(Params),
    case {maps:get(<<"task">>, P, #{}), requirements(maps:get(<<"requirements">>, P, #{}))} of
        {Task, {ok, Req0}} when is_map(Task) ->
            Req = maps:merge(maps:with([traceparent, tracestate], Ctx), Req0),
            case erlmcp_flow:execute(Task, Req) of
                {ok, Result, Meta} ->
                    {ok, maps:merge(jsonable(maps:with([quorum], Meta)), #{result => Result,
                           agent_id => maps:get(agent_id, Meta),
                           trace_id => maps:get(trace_id, Meta),
                           span_id => maps:get(span_id, Meta),
                           latency_us => maps:get(latency_us, Meta),
                           attempts => maps:get(attempts, Meta)})};
                {error, Reason} ->
                    routing_error(Reason)
            end;
        {_, {error, _, _, _} = E} ->
            E;
        {_, _} ->
            invalid_params(<<"task must be an object">>)
    end.

agents(Params) ->
    Wanted = maps:get(<<"capabilities">>, params_map(Params), []),
    case is_list(Wanted) andalso lists:all(fun is_binary/1, Wanted) of
        false ->
            invalid_params(<<"capabilities must be a list of strings">>);
        true ->
            {ok, [#{agent_id => Id, capabilities => Caps, kind => Kind, node => node(Pid),
                    in_flight => erlmcp_flow:get_agent_load(Id)}
                  || {Id, Pid, Kind, Caps} <- erlmcp_flow_registry:list_agents(),
                     lists:all(fun(C) -> lists:member(C, Caps) end, Wanted)]}
    end.

params_map(P) when is_map(P) -> P;
params_map(_) -> #{}.

%% JSON requirements as execute/2 takes them: known keys as atoms, the
%% strategy's name as its atom; anything else is named in the error.
requirements(Req) when is_map(Req) ->
    maps:fold(
      fun(_, _, {error, _, _, _} = E) ->
              E;
         (K, V, {ok, Acc}) ->
              case requirement_key(K) of
                  strategy ->
                      one_of(strategy, V, ?STRATEGIES, <<"unknown strategy">>, Acc);
                  node ->
                      one_of(node, V, [local, any], <<"node is \"local\" or \"any\"">>, Acc);
                  on_no_quorum ->
                      one_of(on_no_quorum, V, [best_effort, error],
                             <<"on_no_quorum is \"best_effort\" or \"error\"">>, Acc);
                  undefined ->
                      invalid_params(<<"unknown requirement: ", (text(K))/binary>>);
                  Key ->
                      {ok, Acc#{Key => V}}
              end
      end, {ok, #{}}, Req);
requirements(_) ->
    invalid_params(<<"requirements must be an object">>).

%% A requirement whose JSON value names one of `Atoms': that atom.
one_of(Key, V, Atoms, Why, Acc) ->
    case [A || A <- Atoms, atom_to_binary(A) =:= V] of
        [A] -> {ok, Acc#{Key => A}};
        [] -> invalid_params(Why)
    end.

%% A JSON requirement's name as the atom execute/2 takes.
requirement_key(<<"capabilities">>) -> capabilities;
requirement_key(<<"timeout">>) -> timeout;
requirement_key(<<"strategy">>) -> strategy;
requirement_key(<<"sticky_key">>) -> sticky_key;
requirement_key(<<"task_class">>) -> task_class;
requirement_key(<<"idempotent">>) -> idempotent;
requirement_key(<<"traceparent">>) -> traceparent;
requirement_key(<<"tracestate">>) -> tracestate;
requirement_key(<<"node">>) -> node;
requirement_key(<<"quorum">>) -> quorum;
requirement_key(<<"on_no_quorum">>) -> on_no_quorum;
requirement_key(_) -> undefined.

invalid_params(Why) ->
    {error, erlmcp_flow_jsonrpc:code(invalid_params), <<"Invalid params">>, #{reason => Why}}.

routing_error({rejected, {rpc_error, Code, Msg}}) when is_integer(Code), is_binary(Msg) ->
    %% a JSON-RPC agent's own answer, as it gave it
    {error, Code, Msg, #{class => rejected}};
routing_error({rejected, {tool_error, Result}}) ->
    {error, error_code({rejected, tool_error}), <<"Rejected by the agent">>,
     #{class => rejected, result => jsonable(Result)}};
routing_error({rejected, Why}) ->
    {error, error_code({rejected, Why}), <<"Rejected by the agent">>,
     #{class => rejected, reason => jsonable(Why)}};
routing_error(Reason) ->
    {error, error_code(Reason), message(Reason), #{reason => text(Reason)}}.

%% @doc The JSON-RPC error code of an erlmcp_flow error reason.
-spec error_code(term()) -> integer().
error_code(no_agents_available) -> -32001;
error_code(overloaded) -> -32002;
error_code({no_available_agent, _}) -> -32003;
error_code({agent_down, _}) -> -32004;
error_code({agent_error, _}) -> -32005;
error_code({bad_agent_reply, _}) -> -32006;
error_code(not_started) -> -32007;
error_code(execution_timeout) -> erlmcp_flow_jsonrpc:code(request_timeout);
error_code({rejected, {rpc_error, Code, _}}) when is_integer(Code) -> Code;
error_code({rejected, _}) -> -32010;
error_code(draining) -> -32011;
error_code({reserved, _}) -> -32013;
error_code({too_many_agents, _}) -> erlmcp_flow_jsonrpc:code(invalid_params);
error_code({byzantine, no_secret}) -> -32020;
error_code({insufficient_agents, _, _}) -> -32021;
error_code({no_quorum, _}) -> -32022;
error_code({badarg, _}) -> erlmcp_flow_jsonrpc:code(invalid_params);
error_code(_) -> erlmcp_flow_jsonrpc:code(internal_error).

message(no_agents_available) -> <<"No agents available">>;
message(overloaded) -> <<"Overloaded">>;
message({no_available_agent, _}) -> <<"Every attempt failed">>;
message({agent_down, _}) -> <<"Agent down">>;
message({agent_error, _}) -> <<"Agent error">>;
message({bad_agent_reply, _}) -> <<"Bad agent reply">>;
message(not_started) -> <<"Not started">>;
message(draining) -> <<"This node is draining: send the task to another node">>;
message(execution_timeout) -> <<"Request timed out">>;
message({byzantine, no_secret}) -> <<"Quorum needs byzantine.hmac_secret">>;
message({insufficient_agents, _, _}) -> <<"Fewer agents than the quorum needs">>;
message({no_quorum, _}) -> <<"No answer reached a quorum">>;
message({badarg, _}) -> <<"Invalid params">>;
message(_) -> <<"Internal error">>.

text(B) when is_binary(B) -> B;
text(T) -> iolist_to_binary(io_lib:format("~0p", [T])).

%% @doc A term made fit for JSON: tuples become lists, pids, references and
%% funs their text; maps, lists and the rest as they are.
-spec jsonable(term()) -> term().
jsonable(M) when is_map(M) -> maps:fold(fun(K, V, A) -> A#{K => jsonable(V)} end, #{}, M);
jsonable(L) when is_list(L) -> [jsonable(X) || X <- L];
jsonable(T) when is_tuple(T) -> jsonable(tuple_to_list(T));
jsonable(P) when is_pid(P); is_reference(P); is_function(P); is_port(P) -> text(P);
jsonable(X) -> X.
