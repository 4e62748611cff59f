%% The application's calls go one way (docs/internals.md#the-layers):
%%
%% - no two modules call each other, directly or through others (no cycle in
%%   the module call graph);
%% - the core parts (routing, resilience, learning, tracing, cluster, and the
%%   configuration, the NIF binding and the call helper at the top) never
%%   call the facade, the application, the fronts (transports, mcp) or the
%%   metrics' readers (the status page, Prometheus, the listener): a server
%%   below that must tell something above sends a message or is given a fun.
%%
%% Checked with xref on the compiled application, so `make test' fails the
%% day a cycle or an upward call comes back.
-module(erlmcp_flow_layers_tests).

-include_lib("eunit/include/eunit.hrl").

-define(CORE_FOLDERS, ["routing", "resilience", "learning", "tracing", "cluster"]).
-define(CORE_TOP, [erlmcp_flow_config, erlmcp_flow_nif, erlmcp_flow_call]).
%% what the core may call of the metrics folder: the counters and the
%% telemetry emitter
-define(METRICS_BELOW, [erlmcp_flow_metrics, erlmcp_flow_telemetry]).

layers_test_() ->
    {setup, fun graph/0, fun stop/1,
     fun({_Xref, Edges, Folder}) ->
             [{"no call cycle among the application's modules",
               ?_assertEqual([], cycles(Edges))},
              {"the core parts never call up",
               ?_assertEqual([], upward(Edges, Folder))},
              {"the graph is read right",
               ?_assert(lists:member({erlmcp_flow, erlmcp_flow_router}, Edges))}]
     end}.

graph() ->
    Ebin = filename:join(code:lib_dir(erlmcp_flow), "ebin"),
    {ok, Xref} = xref:start([{xref_mode, modules}]),
    {ok, Mods} = xref:add_directory(Xref, Ebin, [{warnings, false}]),
    {ok, Edges0} = xref:q(Xref, "ME || AM"),
    Edges = [{A, B} || {A, B} <- Edges0, A =/= B],
    Folder = maps:from_list([{M, folder(Ebin, M)} || M <- Mods]),
    {Xref, Edges, Folder}.

stop({Xref, _, _}) ->
    xref:stop(Xref).

%% The folder under erlang/src a module's source sits in ("" at the top).
folder(Ebin, M) ->
    Beam = filename:join(Ebin, atom_to_list(M) ++ ".beam"),
    {ok, {M, [{compile_info, Info}]}} = beam_lib:chunks(Beam, [compile_info]),
    Source = proplists:get_value(source, Info),
    case lists:reverse(filename:split(Source)) of
        [_File, "src" | _] -> "";
        [_File, Dir, "src" | _] -> Dir
    end.

%% Strongly connected components of more than one module.
cycles(Edges) ->
    G = digraph:new(),
    try
        [begin digraph:add_vertex(G, A), digraph:add_vertex(G, B), digraph:add_edge(G, A, B) end
         || {A, B} <- Edges],
        [lists:sort(C) || C <- digraph_utils:strong_components(G), length(C) > 1]
    after
        digraph:delete(G)
    end.

upward(Edges, Folder) ->
    Core = fun(M) -> lists:member(M, ?CORE_TOP) orelse
                         lists:member(maps:get(M, Folder, none), ?CORE_FOLDERS) end,
    Above = fun(M) ->
                    case maps:get(M, Folder, none) of
                        "" -> not lists:member(M, ?CORE_TOP);
                        "transports" -> true;
                        "mcp" -> true;
                        "metrics" -> not lists:member(M, ?METRICS_BELOW);
                        _ -> false
                    end
            end,
    [{A, B} || {A, B} <- Edges, Core(A), Above(B)].
