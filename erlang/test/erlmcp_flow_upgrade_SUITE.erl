%% Upgrades in place of a release that changes only Erlang modules: the
%% appup bin/appup writes, applied to a running node while tasks run (and
%% taken back), and the relup systools makes from it. A release that
%% changes the NIF is refused there (it is rolled through the nodes with
%% erlmcp_flow:drain/1: erlmcp_flow_cluster_SUITE:rolling_upgrade).
-module(erlmcp_flow_upgrade_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([upgrade_under_load/1, relup/1, nif_change_refused/1]).
%% run on the peer
-export([start/1, agent/0, start_load/2, load_loop/3, counts/1, stop_load/1]).

-define(OLD, "1.0.0").
-define(NEW, "1.0.1").
-define(COOKIE, erlmcp_flow_upgrade_suite).

all() -> [upgrade_under_load, relup, nif_change_refused].

init_per_suite(Config) ->
    case erlmcp_flow_test_util:require(epmd, fun() -> os:find_executable("epmd") =/= false end,
                                       "epmd is not installed: no peer node here") of
        {skip, _} = Skip ->
            Skip;
        ok ->
            Dir = ?config(priv_dir, Config),
            Old = library(Dir, "old", ?OLD),
            New = library(Dir, "new", ?NEW),
            %% the new release: the router (a library module on every task's
            %% path) and the registry (a gen_server) changed
            [changed(New, M) || M <- [erlmcp_flow_router, erlmcp_flow_registry]],
            [{old, Old}, {new, New} | Config]
    end.

end_per_suite(_Config) ->
    ok.

%%--------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------

%% 1.0.0 -> 1.0.1 -> 1.0.0 on a node whose callers run tasks all along
%% (none idempotent: a task lost to the upgrade would fail): every task
%% answered, the registry updated in place (same process, same agents),
%% the new code running, then the old one again.
upgrade_under_load(Config) ->
    Old = ?config(old, Config),
    New = ?config(new, Config),
    {Out, 0} = appup(Old, New),
    ct:log("bin/appup: ~ts", [Out]),
    {ok, [{?NEW, [{?OLD, Up}], [{?OLD, Down}]}]} =
        file:consult(filename:join([New, "ebin", "erlmcp_flow.appup"])),
    ?assertEqual([{update, erlmcp_flow_registry, soft, soft_purge, soft_purge, []},
                  {load_module, erlmcp_flow_router, soft_purge, soft_purge, []}], Up),
    ?assertEqual(Up, Down),
    {ok, Peer, _Node} = peer:start(#{name => peer:random_name("upgrade"), connection => standard_io,
                                     args => ["-setcookie", atom_to_list(?COOKIE),
                                              "-pa", filename:join(Old, "ebin"),
                                              "-pa", filename:dirname(code:which(?MODULE))]}),
    try
        ok = peer:call(Peer, ?MODULE, start, [8]),
        Registry = peer:call(Peer, erlang, whereis, [erlmcp_flow_registry]),
        Load = peer:call(Peer, ?MODULE, start_load, [8, #{capabilities => [<<"work">>],
                                                          idempotent => false}]),
        progress(Peer, Load),
        {ok, Unpurged} = peer:call(Peer, release_handler, upgrade_app, [erlmcp_flow, New], 60000),
        ct:log("upgraded to ~s; unpurged then: ~p", [?NEW, Unpurged]),
        ?assertEqual({ok, ?NEW}, peer:call(Peer, application, get_key, [erlmcp_flow, vsn])),
        ?assert(peer:call(Peer, erlmcp_flow_router, upgraded, [])),
        ?assert(peer:call(Peer, erlmcp_flow_registry, upgraded, [])),
        ?assertEqual(Registry, peer:call(Peer, erlang, whereis, [erlmcp_flow_registry])),
        ?assertEqual(8, length(peer:call(Peer, erlmcp_flow_registry, list_agents, []))),
        %% tasks go on through the new code
        progress(Peer, Load),
        %% the callers that waited in the old router have left it
        purged(Peer, [erlmcp_flow_router, erlmcp_flow_registry]),
        {ok, _} = peer:call(Peer, release_handler, downgrade_app, [erlmcp_flow, ?OLD, Old], 60000),
        ?assertEqual({ok, ?OLD}, peer:call(Peer, application, get_key, [erlmcp_flow, vsn])),
        ?assertNot(peer:call(Peer, erlang, function_exported, [erlmcp_flow_router, upgraded, 0])),
        progress(Peer, Load),
        #{ok := Ok, failed := Failed} = peer:call(Peer, ?MODULE, stop_load, [Load], 30000),
        ct:log("through the upgrade and back: ~b tasks answered, failures ~p", [Ok, Failed]),
        ?assertEqual([], Failed),
        ?assertEqual(Registry, peer:call(Peer, erlang, whereis, [erlmcp_flow_registry]))
    after
        peer:stop(Peer)
    end.

%% systools makes the relup of a release holding erlmcp_flow 1.0.0 to one
%% holding 1.0.1 from the appup: it loads the router and suspends, loads
%% and resumes the registry, and nothing restarts the emulator.
relup(Config) ->
    Old = ?config(old, Config),
    New = ?config(new, Config),
    {_, 0} = appup(Old, New),
    Dir = filename:join(?config(priv_dir, Config), "rel"),
    ok = filelib:ensure_path(Dir),
    Rel = fun(Name, Vsn) ->
                  Apps = [{A, version(A)} || A <- [kernel, stdlib, sasl, crypto, inets]],
                  File = filename:join(Dir, Name),
                  ok = file:write_file(File ++ ".rel",
                                       io_lib:format("~p.~n", [{release, {"flow", Name}, {erts, erlang:system_info(version)},
                                                                Apps ++ [{erlmcp_flow, Vsn}]}])),
                  File
          end,
    OldRel = Rel("old", ?OLD),
    NewRel = Rel("new", ?NEW),
    Path = [filename:join(Old, "ebin"), filename:join(New, "ebin")],
    {ok, Relup, _Mod, Warnings} = systools:make_relup(NewRel, [OldRel], [OldRel],
                                                      [{path, Path}, {outdir, Dir}, silent, no_warn_sasl]),
    ct:log("relup ~p~nwarnings ~p", [Relup, Warnings]),
    {"new", [{"old", _, UpScript}], [{"old", _, _DownScript}]} = Relup,
    ?assert(lists:member({load, {erlmcp_flow_router, soft_purge, soft_purge}}, UpScript)),
    ?assert(lists:member({suspend, [erlmcp_flow_registry]}, UpScript)),
    ?assert(lists:member({resume, [erlmcp_flow_registry]}, UpScript)),
    ?assertNot(lists:member(restart_emulator, UpScript)),
    ?assertNot(lists:member(restart_new_emulator, UpScript)).

%% A new build of the NIF (its library or its module) has no appup: bin/appup
%% says so and exits 2.
nif_change_refused(Config) ->
    Old = ?config(old, Config),
    Dir = ?config(priv_dir, Config),
    So = library(Dir, "new-so", "1.0.2"),
    ok = file:write_file(filename:join([So, "priv", "erlmcp_flow_nif.so"]), <<"another build">>,
                         [append]),
    {Out1, 2} = appup(Old, So),
    ?assertNotEqual(nomatch, string:find(Out1, "priv/erlmcp_flow_nif.so")),
    Beam = library(Dir, "new-beam", "1.0.3"),
    changed(Beam, erlmcp_flow_nif),
    {Out2, 2} = appup(Old, Beam),
    ?assertNotEqual(nomatch, string:find(Out2, "erlmcp_flow_nif.beam")),
    ?assertNot(filelib:is_file(filename:join([Beam, "ebin", "erlmcp_flow.appup"]))).

%%--------------------------------------------------------------------
%% On the peer
%%--------------------------------------------------------------------

%% erlmcp_flow with `N' agents answering in about a millisecond.
start(N) ->
    ok = logger:set_primary_config(level, error),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    [ok = erlmcp_flow:register_agent(<<"agent-", (integer_to_binary(I))/binary>>,
                                     spawn(?MODULE, agent, []), [<<"work">>])
     || I <- lists:seq(1, N)],
    ok.

agent() ->
    receive
        {execute_task, Task, _Ctx, From, Ref} ->
            timer:sleep(1),
            From ! {task_result, Ref, {ok, Task}},
            agent()
    end.

%% `N' callers running tasks one after another until stop_load/1.
start_load(N, Req) ->
    Tab = ets:new(upgrade_load, [public, set, {write_concurrency, true}]),
    Heir = spawn(fun() -> receive never -> ok end end),
    true = ets:give_away(Tab, Heir, []),
    {Tab, [spawn(?MODULE, load_loop, [Tab, Req, 0]) || _ <- lists:seq(1, N)]}.

load_loop(Tab, Req, I) ->
    receive
        {stop, From} -> From ! {load_done, self()}
    after 0 ->
        case erlmcp_flow:execute(#{i => I}, Req, #{timeout => 10000}) of
            {ok, _, _} -> ets:update_counter(Tab, ok, 1, {ok, 0});
            Error -> ets:insert(Tab, {{failed, self(), I}, Error})
        end,
        load_loop(Tab, Req, I + 1)
    end.

counts({Tab, _}) ->
    case ets:lookup(Tab, ok) of
        [{ok, N}] -> N;
        [] -> 0
    end.

stop_load({Tab, Pids} = Load) ->
    [P ! {stop, self()} || P <- Pids],
    [receive {load_done, P} -> ok end || P <- Pids],
    #{ok => counts(Load), failed => [E || {{failed, _, _}, E} <- ets:tab2list(Tab)]}.

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

%% A copy of this build's erlmcp_flow at version `Vsn': `Dir/Name/erlmcp_flow-Vsn'.
library(Dir, Name, Vsn) ->
    Lib = filename:join([Dir, Name, "erlmcp_flow-" ++ Vsn]),
    Ebin = filename:join(Lib, "ebin"),
    Priv = filename:join(Lib, "priv"),
    ok = filelib:ensure_path(Ebin),
    ok = filelib:ensure_path(Priv),
    Here = filename:join(code:lib_dir(erlmcp_flow), "ebin"),
    [{ok, _} = file:copy(B, filename:join(Ebin, filename:basename(B)))
     || B <- filelib:wildcard(filename:join(Here, "*.beam"))],
    {ok, [{application, erlmcp_flow, Props}]} = file:consult(filename:join(Here, "erlmcp_flow.app")),
    App = {application, erlmcp_flow, lists:keystore(vsn, 1, Props, {vsn, Vsn})},
    ok = file:write_file(filename:join(Ebin, "erlmcp_flow.app"), io_lib:format("~p.~n", [App])),
    {ok, _} = file:copy(filename:join(code:priv_dir(erlmcp_flow), "erlmcp_flow_nif.so"),
                        filename:join(Priv, "erlmcp_flow_nif.so")),
    Lib.

%% Module `M' of the library `Lib' compiled again from its source with one
%% function more, `upgraded() -> true'.
changed(Lib, M) ->
    Root = erlmcp_flow_test_util:repo_root("bin/appup"),
    [Source] = filelib:wildcard(filename:join(Root, "erlang/src/**/" ++ atom_to_list(M) ++ ".erl")),
    {ok, Forms} = epp:parse_file(Source, [{includes, [filename:dirname(Source)]}]),
    {Head, [Eof]} = lists:split(length(Forms) - 1, Forms),
    {Attrs, Rest} = lists:splitwith(fun(F) -> element(1, F) =:= attribute andalso
                                                  element(3, F) =/= spec end, Head),
    Extra = [{attribute, 1, export, [{upgraded, 0}]}],
    Fun = {function, 1, upgraded, 0, [{clause, 1, [], [], [{atom, 1, true}]}]},
    {ok, M, Beam} = compile:forms(Attrs ++ Extra ++ Rest ++ [Fun, Eof], [binary, debug_info, return_errors]),
    ok = file:write_file(filename:join([Lib, "ebin", atom_to_list(M) ++ ".beam"]), Beam).

%% bin/appup Old New: its output and exit status.
appup(Old, New) ->
    Script = filename:join(erlmcp_flow_test_util:repo_root("bin/appup"), "bin/appup"),
    Port = open_port({spawn_executable, Script}, [{args, [Old, New]}, exit_status, stderr_to_stdout,
                                                  binary]),
    collect(Port, <<>>).

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, <<Acc/binary, D/binary>>);
        {Port, {exit_status, S}} -> {binary_to_list(Acc), S}
    after 60000 -> error(appup_hangs)
    end.

%% Waits until the load answered some more tasks.
progress(Peer, Load) ->
    N0 = peer:call(Peer, ?MODULE, counts, [Load]),
    wait(fun() -> peer:call(Peer, ?MODULE, counts, [Load]) >= N0 + 200 end, 20000).

%% Waits until no process runs the old code of `Mods' (soft purges succeed).
purged(Peer, Mods) ->
    wait(fun() -> lists:all(fun(M) -> peer:call(Peer, code, soft_purge, [M]) end, Mods) end, 20000).

wait(Fun, Ms) ->
    erlmcp_flow_test_util:await(Fun, Ms).

version(App) ->
    _ = application:load(App),
    {ok, V} = application:get_key(App, vsn),
    V.
