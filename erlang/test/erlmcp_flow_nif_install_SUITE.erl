%% The NIF library is installed beside running nodes: a node executing tasks
%% from a build folder must survive that folder being built again, twice,
%% with a library whose bytes changed (native/install-nif: a rename, never
%% a rewrite of the mapped file). The node here is a real one (OTP peer)
%% loading the library from a scratch copy of the application, so the
%% checkout's own library is not touched.
-module(erlmcp_flow_nif_install_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("kernel/include/file.hrl").

-export([all/0, init_per_testcase/2, end_per_testcase/2]).
-export([a_running_node_survives_two_installs/1,
         an_unchanged_library_is_not_replaced/1]).
%% run on the peer
-export([setup_node/0, start_loops/1, stop_loops/0, task_loop/2, count/0, agent_loop/0]).

-define(CAP, <<"install">>).

all() ->
    [a_running_node_survives_two_installs, an_unchanged_library_is_not_replaced].

init_per_testcase(_Case, Config) ->
    Root = erlmcp_flow_test_util:repo_root("native/install-nif"),
    Scratch = filename:join(?config(priv_dir, Config), "lib"),
    App = filename:join(Scratch, "erlmcp_flow"),
    Ebin = filename:join(App, "ebin"),
    Priv = filename:join(App, "priv"),
    ok = filelib:ensure_path(Ebin),
    ok = filelib:ensure_path(Priv),
    Built = filename:join(code:priv_dir(erlmcp_flow), "erlmcp_flow_nif.so"),
    Nif = filename:join(Priv, "erlmcp_flow_nif.so"),
    {ok, _} = file:copy(Built, Nif),
    %% the application's beams as built (under cover, code:which/1 says
    %% cover_compiled: the directory is the library's)
    LibEbin = filename:join(code:lib_dir(erlmcp_flow), "ebin"),
    [{ok, _} = file:copy(F, filename:join(Ebin, filename:basename(F)))
     || F <- filelib:wildcard(filename:join(LibEbin, "*.{beam,app}"))],
    [{root, Root}, {built, Built}, {nif, Nif}, {ebin, Ebin} | Config].

end_per_testcase(_Case, _Config) ->
    ok.

%% The node runs tasks on 8 agents from 4 callers while the library under
%% it is replaced twice by a different one; it keeps running tasks after each
%% install, and none fails.
a_running_node_survives_two_installs(Config) ->
    {Peer, Node} = start_node(Config),
    try survives(Config, Peer, Node)
    after catch peer:stop(Peer)
    end.

survives(Config, Peer, Node) ->
    ok = peer:call(Peer, ?MODULE, start_loops, [4]),
    wait_progress(Peer, 200),
    Changed = changed_copy(Config),
    lists:foreach(
      fun(Source) ->
              Before = peer:call(Peer, ?MODULE, count, []),
              ok = install(Config, Source),
              %% the node is alive and still routing with the library it loaded
              wait_progress(Peer, Before + 500),
              ?assertEqual(Node, peer:call(Peer, erlang, node, []))
      end, [Changed, ?config(built, Config)]),
    %% the installed file is the last one given, complete
    {ok, Want} = file:read_file(?config(built, Config)),
    ?assertEqual({ok, Want}, file:read_file(?config(nif, Config))),
    ?assertEqual([0, 0, 0, 0], peer:call(Peer, ?MODULE, stop_loops, [])),
    ok.

%% Installing the same bytes again leaves the file alone (same inode): an
%% unchanged build replaces nothing.
an_unchanged_library_is_not_replaced(Config) ->
    Nif = ?config(nif, Config),
    {ok, #file_info{inode = Inode}} = file:read_file_info(Nif),
    ok = install(Config, ?config(built, Config)),
    ?assertMatch({ok, #file_info{inode = Inode}}, file:read_file_info(Nif)),
    Changed = changed_copy(Config),
    ok = install(Config, Changed),
    {ok, #file_info{inode = Other}} = file:read_file_info(Nif),
    ?assertNotEqual(Inode, Other),
    %% no temporary file is left beside it
    ?assertEqual(["erlmcp_flow_nif.so"],
                 [filename:basename(F) || F <- filelib:wildcard(filename:join(filename:dirname(Nif), "*"))
                                                ++ filelib:wildcard(filename:join(filename:dirname(Nif), ".*"))]),
    ok.

%%--------------------------------------------------------------------
%% On the peer
%%--------------------------------------------------------------------

%% A table that counts tasks, owned by a process of the node's own, and 8
%% agents.
setup_node() ->
    Self = self(),
    spawn(fun() ->
                  ets:new(install_tasks, [named_table, public]),
                  ets:insert(install_tasks, {done, 0}),
                  Self ! table_ready,
                  receive stop -> ok end
          end),
    receive table_ready -> ok end,
    [ok = erlmcp_flow:register_agent(iolist_to_binary(["agent-", integer_to_list(I)]),
                                     spawn(?MODULE, agent_loop, []), [?CAP])
     || I <- lists:seq(1, 8)],
    ok.

start_loops(N) ->
    Self = self(),
    Loops = [spawn(?MODULE, task_loop, [Self, 0]) || _ <- lists:seq(1, N)],
    ets:insert(install_tasks, {loops, Loops}),
    ok.

stop_loops() ->
    Loops = ets:lookup_element(install_tasks, loops, 2),
    [begin
         L ! {stop, self()},
         receive {loop_done, L, F} -> F after 10000 -> {stuck, L} end
     end || L <- Loops].

%% Executes tasks until told to stop; counts them in a public table and
%% reports its failures.
task_loop(Parent, Failed) ->
    receive
        {stop, To} -> To ! {loop_done, self(), Failed}
    after 0 ->
        Failed1 = case erlmcp_flow:execute(#{n => 1}, #{capabilities => [?CAP]}) of
                      {ok, _, _} -> Failed;
                      _ -> Failed + 1
                  end,
        ets:update_counter(install_tasks, done, 1),
        task_loop(Parent, Failed1)
    end.

count() ->
    ets:lookup_element(install_tasks, done, 2).

agent_loop() ->
    receive
        {execute_task, Task, _Ctx, From, Ref} ->
            From ! {task_result, Ref, {ok, Task}},
            agent_loop()
    end.


%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

start_node(Config) ->
    TestDir = filename:dirname(code:which(?MODULE)),
    {ok, Peer, Node} = peer:start(#{name => peer:random_name("install"),
                                    connection => standard_io,
                                    args => ["-pa", ?config(ebin, Config), "-pa", TestDir]}),
    %% the node must load the scratch copy, not the checkout's build
    Loaded = peer:call(Peer, code, which, [erlmcp_flow]),
    ?assertEqual(?config(ebin, Config), filename:dirname(Loaded)),
    ok = peer:call(Peer, logger, set_primary_config, [level, error]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [erlmcp_flow]),
    ok = peer:call(Peer, ?MODULE, setup_node, []),
    ct:pal("node ~p loads ~ts", [Node, peer:call(Peer, code, priv_dir, [erlmcp_flow])]),
    {Peer, Node}.

%% A copy of the built library with bytes appended: a different file that
%% still loads (the ELF loader ignores what follows its segments).
changed_copy(Config) ->
    Dest = filename:join(?config(priv_dir, Config), "changed.so"),
    {ok, Bin} = file:read_file(?config(built, Config)),
    ok = file:write_file(Dest, [Bin, crypto:strong_rand_bytes(4096)]),
    Dest.

%% The build's install step, as the compile hook runs it.
install(Config, Source) ->
    Script = filename:join(?config(root, Config), "native/install-nif"),
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, [Script, Source, ?config(nif, Config)]}, exit_status,
                      stderr_to_stdout, binary]),
    collect(Port, []).

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, [Acc, D]);
        {Port, {exit_status, 0}} -> ok;
        {Port, {exit_status, N}} -> {error, {N, iolist_to_binary(Acc)}}
    after 60000 -> error(install_timeout)
    end.

wait_progress(Peer, AtLeast) ->
    erlmcp_flow_test_util:wait_until(fun() -> peer:call(Peer, ?MODULE, count, []) >= AtLeast end,
                                     30000).
