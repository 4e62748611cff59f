%% @doc The operator's view: `GET /status' (one self-contained HTML page:
%% its CSS and script inline, nothing fetched from outside the node) and
%% `GET /status.json' (what the page shows, as a JSON document), served by
%% the metrics listener (`metrics => #{http => true}').
%%
%% The document has the node and the nodes it sees (suspected and
%% partitioned ones marked, each peer's phi), the node-wide figures of
%% `stats/0', the rates of the last five minutes (tasks, failures, retries,
%% fallbacks, overloaded, per second, from `erlmcp_flow_metrics:history/0'),
%% one page of agents (id, node, capabilities, kind, in flight, p50/p99,
%% success rate, breaker, blacklisting), what Q-learning learned for those
%% agents (their values by state), and the last traces with their spans.
%%
%% Large nodes stay usable: agents come a page at a time, sorted and
%% filtered by the node (query `offset', `limit' (at most 500, default 50),
%% `sort' (`id', `node', `in_flight', `p50_us', `p99_us', `success_rate',
%% `rejected', `breaker'), `order' (`asc' | `desc'), `capability'); capabilities are
%% summarised (the 200 most held, with counts); traces are the last 10 (at
%% most 100 with `traces'). `GET /status/explain.json?capabilities=a,b' is
%% `explain/1' for a capability set.
-module(erlmcp_flow_status).

-export([handle/2]).
-export([document/1]).
-export([explain/1]).
-export([page/0]).

-define(DEFAULT_LIMIT, 50).
-define(MAX_LIMIT, 500).
-define(TOP_CAPABILITIES, 200).
-define(DEFAULT_TRACES, 10).
-define(SORTS, [<<"id">>, <<"node">>, <<"in_flight">>, <<"p50_us">>, <<"p99_us">>,
                <<"success_rate">>, <<"rejected">>, <<"breaker">>]).

%% @doc Answers one request of the metrics listener under `/status'.
-spec handle(binary(), binary()) -> {pos_integer(), iodata(), binary()}.
handle(Path, Query) when not is_binary(Path); not is_binary(Query) ->
    {400, "text/plain", <<"bad request\n">>};
handle(<<"/status">>, _Query) ->
    {200, "text/html; charset=utf-8", page()};
handle(<<"/status.json">>, Query) ->
    json(document(params(Query)));
handle(<<"/status/explain.json">>, Query) ->
    json(explain(params(Query)));
handle(_Path, _Query) ->
    {404, "text/plain", <<"not found: GET /status, /status.json, /status/explain.json\n">>}.

json({error, not_started}) ->
    {503, "application/json", <<"{\"error\":\"not_started\"}">>};
json({error, _}) ->
    {400, "application/json", <<"{\"error\":\"bad_request\"}">>};
json(Doc) ->
    case erlmcp_flow_jsonrpc:encode_json(Doc) of
        {ok, Bin} -> {200, "application/json", Bin};
        {error, Why} -> {500, "text/plain", iolist_to_binary(io_lib:format("~p~n", [Why]))}
    end.

%% @doc The page: `priv/status.html'.
-spec page() -> binary().
page() ->
    Path = filename:join(code:priv_dir(erlmcp_flow), "status.html"),
    case file:read_file(Path) of
        {ok, Bin} -> Bin;
        {error, Why} -> iolist_to_binary(io_lib:format("status page missing: ~ts: ~p~n", [Path, Why]))
    end.

%% @doc The status document for the query parameters `Params' (binary keys
%% and values), or `{error, not_started}'.
-spec document(#{binary() => binary()}) -> map() | {error, not_started | {badarg, params}}.
document(Params) when not is_map(Params) ->
    {error, {badarg, params}};
document(Params) ->
    case erlmcp_flow:stats() of
        {error, _} = E ->
            E;
        Stats ->
            All = erlmcp_flow_registry:list_agents(),
            Agents = agents(All, Params),
            #{node => node(),
              time => os:system_time(millisecond),
              cluster => cluster(Stats),
              stats => maps:without([nodes, suspected, partitions, phi], Stats),
              rates => case erlmcp_flow_metrics:history() of
                           {error, _} -> [];
                           H -> H
                       end,
              agents => Agents,
              capabilities => capabilities(All),
              learning => learning([maps:get(id, A) || A <- maps:get(items, Agents)]),
              traces => traces(int(maps:get(<<"traces">>, Params, undefined), ?DEFAULT_TRACES, 100))}
    end.

%% @doc `explain/1' for the capabilities in `Params' (`capabilities', comma
%% separated; `task_class' optional), as JSON can carry it.
-spec explain(#{binary() => binary()}) -> map() | {error, not_started | {badarg, params}}.
explain(Params) when not is_map(Params) ->
    {error, {badarg, params}};
explain(Params) ->
    Given = case maps:get(<<"capabilities">>, Params, <<>>) of
                B when is_binary(B) -> B;
                _ -> <<>>
            end,
    Caps = [C || C <- binary:split(Given, <<",">>, [global]), C =/= <<>>],
    Req = maps:merge(#{capabilities => Caps},
                     maps:with([task_class], #{task_class => maps:get(<<"task_class">>, Params, none)})),
    Req1 = case Req of #{task_class := none} -> maps:remove(task_class, Req); _ -> Req end,
    case erlmcp_flow:explain(Req1) of
        {ok, #{candidates := Cands}} ->
            #{capabilities => Caps,
              candidates => [#{id => Id, softmax => P, q_value => Q, visits => V,
                               state => state_label(S), in_flight => F,
                               success_rate => SR, ewma_latency_us => L, breaker => B}
                             || #{id := Id, softmax := P, q_value := Q, visits := V, state := S,
                                  in_flight := F, success_rate := SR, ewma_latency_us := L,
                                  breaker := B} <- Cands]};
        {error, not_started} = E ->
            E;
        {error, Reason} ->
            #{capabilities => Caps, error => iolist_to_binary(io_lib:format("~0p", [Reason])),
              candidates => []}
    end.

%%====================================================================
%% Internal functions
%%====================================================================

%% The query string's parameters; a malformed one is no parameter.
params(Query) when is_binary(Query) ->
    case catch uri_string:dissect_query(Query) of
        Pairs when is_list(Pairs) ->
            maps:from_list([{K, V} || {K, V} <- Pairs, is_binary(K), is_binary(V)]);
        _ ->
            #{}
    end;
params(_) ->
    #{}.

int(undefined, Default, _Max) -> Default;
int(Bin, Default, Max) ->
    try binary_to_integer(Bin) of
        N when N >= 0 -> min(N, Max);
        _ -> Default
    catch error:badarg -> Default
    end.

cluster(Stats) ->
    Suspected = maps:get(suspected, Stats, []),
    Partitions = maps:get(partitions, Stats, []),
    Phi = maps:get(phi, Stats, #{}),
    Known = lists:usort(maps:get(nodes, Stats, [node()]) ++ Suspected ++ Partitions ++ maps:keys(Phi)),
    #{nodes => [#{node => N, self => N =:= node(),
                  suspected => lists:member(N, Suspected),
                  partitioned => lists:member(N, Partitions),
                  phi => maps:get(N, Phi, null)} || N <- Known],
      partitions => Partitions, suspected => Suspected}.

%% One page of agents, filtered and sorted here.
agents(All, Params) ->
    Cap = maps:get(<<"capability">>, Params, <<>>),
    Matching = case Cap of
                   <<>> -> All;
                   _ -> [A || {_, _, _, Caps} = A <- All, lists:member(Cap, Caps)]
               end,
    Sort = case maps:get(<<"sort">>, Params, <<"id">>) of
               S0 -> case lists:member(S0, ?SORTS) of true -> S0; false -> <<"id">> end
           end,
    Order = case maps:get(<<"order">>, Params, <<"asc">>) of <<"desc">> -> desc; _ -> asc end,
    Offset = int(maps:get(<<"offset">>, Params, undefined), 0, 1 bsl 32),
    Limit = max(1, int(maps:get(<<"limit">>, Params, undefined), ?DEFAULT_LIMIT, ?MAX_LIMIT)),
    Rows = case Sort of
               <<"id">> -> Matching;   %% list_agents is sorted by id: stats for the page only
               _ -> sort_by(Sort, [row(A) || A <- Matching])
           end,
    Ordered = case Order of asc -> Rows; desc -> lists:reverse(Rows) end,
    Page = lists:sublist(Ordered, Offset + 1, Limit),
    #{total => length(All), matching => length(Matching), offset => Offset, limit => Limit,
      sort => Sort, order => Order, capability => Cap,
      items => [item(R) || R <- Page]}.

row({Id, Pid, Kind, Caps}) ->
    Stats = case erlmcp_flow_registry:agent_stats(Id) of
                {ok, S} -> S;
                _ -> #{}
            end,
    {Id, Pid, Kind, Caps, Stats}.

item({_, _, _, _} = A) -> item(row(A));
item({Id, Pid, Kind, Caps, S}) ->
    #{id => Id, node => node(Pid), local => node(Pid) =:= node(), kind => Kind,
      capabilities => Caps,
      in_flight => maps:get(in_flight, S, 0),
      p50_us => null_if_undefined(maps:get(p50_us, S, undefined)),
      p99_us => null_if_undefined(maps:get(p99_us, S, undefined)),
      success_rate => maps:get(success_rate, S, null),
      dispatched => maps:get(dispatched, S, 0),
      %% refused as the callers' error: answers, not failures of the agent
      rejected => maps:get(rejected, S, 0),
      breaker => maps:get(breaker, S, closed),
      blacklisted => erlmcp_flow_byzantine_detector:is_blacklisted(Id) orelse
                         erlmcp_flow_byzantine_detector:is_blacklisted(node(Pid))}.

null_if_undefined(undefined) -> null;
null_if_undefined(V) -> V.

sort_by(Sort, Rows) ->
    Key = fun({Id, Pid, _, _, S}) ->
                  case Sort of
                      <<"node">> -> {node(Pid), Id};
                      <<"breaker">> -> {breaker_rank(maps:get(breaker, S, closed)), Id};
                      _ ->
                          K = binary_to_existing_atom(Sort),
                          %% unknown figures (no outcome yet) sort first
                          case maps:get(K, S, undefined) of
                              undefined -> {0, 0, Id};
                              V -> {1, V, Id}
                          end
                  end
          end,
    [R || {_, R} <- lists:sort([{Key(R), R} || R <- Rows])].

breaker_rank(closed) -> 0;
breaker_rank(half_open) -> 1;
breaker_rank(open) -> 2;
breaker_rank(_) -> 3.

%% The capabilities most held, with how many agents hold each.
capabilities(All) ->
    Counts = lists:foldl(fun({_, _, _, Caps}, Acc) ->
                                 lists:foldl(fun(C, A) -> maps:update_with(C, fun(N) -> N + 1 end, 1, A) end,
                                             Acc, Caps)
                         end, #{}, All),
    Top = lists:sublist(lists:sort(fun({C1, N1}, {C2, N2}) -> {N1, C2} >= {N2, C1} end,
                                   maps:to_list(Counts)), ?TOP_CAPABILITIES),
    [#{capability => C, agents => N} || {C, N} <- Top].

%% The learned values of `Ids' by state: the states any of them visited.
learning(Ids) ->
    Table = case erlmcp_flow_q_learning:get_q_table() of
                T when is_map(T) -> T;
                _ -> #{}
            end,
    Rows = [{Id, maps:get(Id, Table, #{})} || Id <- Ids],
    States = lists:usort(lists:append([maps:keys(R) || {_, R} <- Rows])),
    #{states => [state_label(S) || S <- States],
      rows => [#{agent => Id,
                 values => [case R of #{S := {V, _}} -> V; #{} -> null end || S <- States],
                 visits => [case R of #{S := {_, N}} -> N; #{} -> 0 end || S <- States]}
               || {Id, R} <- Rows]}.

%% `{LoadLevel, SuccessBucket, LatencyBucket, Class}' as a short label.
state_label({Load, Success, Latency, Class}) ->
    iolist_to_binary(io_lib:format("load ~p, ~p success, ~p, class ~p", [Load, Success, Latency, Class]));
state_label(Other) ->
    iolist_to_binary(io_lib:format("~0p", [Other])).

%% The last traces, each with its spans in parent order.
traces(N) ->
    case erlmcp_flow_registry:router_if_running() of
        undefined ->
            [];
        Router ->
            [#{trace_id => T, spans => [span(S) || S <- Spans]}
             || T <- erlmcp_flow_nif:recent_traces(Router, N),
                Spans <- [erlmcp_flow_nif:trace_chain(Router, T)], is_list(Spans), Spans =/= []]
    end.

span(S) ->
    maps:map(fun(_, undefined) -> null;
                (_, V) -> V
             end, maps:with([trace_id, span_id, parent_span_id, agent_id, summary, start_us, end_us,
                             outcome, attempt, kind], S)).
