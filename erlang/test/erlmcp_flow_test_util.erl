%% Helpers shared by the EUnit and Common Test suites: start and stop the
%% application, wait for the registry to catch up without sleeping, and check
%% that a test left nothing behind.
-module(erlmcp_flow_test_util).

-include_lib("eunit/include/eunit.hrl").

-export([capture_log/1, log/2, restart_registry/1, start_optional/2]).
-export([run_exe/2, repo_root/1, closed_port/0, require/3, opted_out/1, tls_files/1]).

-export([start/0, stop/1, stop_drained/1, unregister_all/0, with_env/2, sync_registry/0, wait_until/1, wait_until/2, await/2, assert_clean/0,
         echo_agent/0, raw_agent/1, remote_pid/0, relaying_agent/0]).

start() ->
    %% Tests crash agents on purpose; their crash reports are expected noise.
    logger:set_primary_config(level, critical),
    _ = application:stop(erlmcp_flow),
    {ok, Apps} = application:ensure_all_started(erlmcp_flow),
    Apps.

stop(_) ->
    ok = application:stop(erlmcp_flow).

%% Unregisters every agent and swarm.
unregister_all() ->
    [ok = erlmcp_flow:unregister_agent(Id) || {Id, _, _, _} <- erlmcp_flow_registry:list_agents()],
    ok.

%% The teardown of suites whose tests leave agents and tasks behind: every
%% agent unregistered, the tasks in flight settled, the application stopped.
stop_drained(Apps) ->
    unregister_all(),
    wait_until(fun() -> maps:get(in_flight, erlmcp_flow:stats()) =:= 0 end),
    stop(Apps).

%% Runs `Fun' with the application started under the environment `Env'
%% (`[{Section, Map}]'), then stops it and restores the environment.
with_env(Env, Fun) ->
    logger:set_primary_config(level, critical),
    _ = application:stop(erlmcp_flow),
    _ = application:load(erlmcp_flow),
    [ok = application:set_env(erlmcp_flow, K, V) || {K, V} <- Env],
    try
        {ok, _} = application:ensure_all_started(erlmcp_flow),
        Fun()
    after
        ok = application:stop(erlmcp_flow),
        [application:unset_env(erlmcp_flow, K) || {K, _} <- Env]
    end.

%% A synchronous call to the registry: every message it had before this one
%% (e.g. the 'DOWN' of a killed agent) has been handled when it returns.
sync_registry() ->
    case whereis(erlmcp_flow_registry) of
        undefined -> ok;
        Pid ->
            try sys:get_state(Pid) of _ -> ok
            catch exit:_ -> ok %% it died meanwhile (tests that restart it)
            end
    end.

%% Polls `Fun' until it returns true, letting the registry and the scheduler
%% run in between; fails after a bounded number of rounds instead of sleeping.
wait_until(Fun) ->
    wait_until(Fun, 2000).

wait_until(Fun, 0) ->
    ?assert(Fun());
wait_until(Fun, N) ->
    case Fun() of
        true -> ok;
        false ->
            sync_registry(),
            erlang:yield(),
            receive after 1 -> ok end,
            wait_until(Fun, N - 1)
    end.

%% Polls `Fun' every 10 ms until it holds, failing past `Ms' milliseconds
%% (for conditions on other nodes, where this node's registry says nothing).
await(Fun, Ms) ->
    await_until(Fun, erlang:monotonic_time(millisecond) + Ms, Ms).

await_until(Fun, Deadline, Ms) ->
    case Fun() of
        true -> ok;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({not_within_ms, Ms});
                false -> timer:sleep(10), await_until(Fun, Deadline, Ms)
            end
    end.

%% Nothing registered, nothing in flight.
assert_clean() ->
    ?assertEqual([], erlmcp_flow_registry:list_agents()),
    ?assertMatch(#{agents := 0, in_flight := 0}, erlmcp_flow:stats()).

%% A raw-protocol agent answering `{ok, Task}' to every task.
echo_agent() ->
    raw_agent(fun(Task) -> {ok, Task} end).

%% A raw-protocol agent answering `Answer(Task)'; `noreply' sends nothing.
%% It tells its spawner about every cancel it receives.
raw_agent(Answer) ->
    Owner = self(),
    spawn(fun() -> raw_loop(Owner, Answer) end).

raw_loop(Owner, Answer) ->
    receive
        {execute_task, Task, Ctx, From, Ref} ->
            Owner ! {task_seen, self(), Task, Ctx},
            case Answer(Task) of
                noreply -> ok;
                Reply -> From ! {task_result, Ref, Reply}
            end,
            raw_loop(Owner, Answer);
        {cancel_task, Ref} ->
            Owner ! {cancelled, self(), Ref},
            raw_loop(Owner, Answer);
        stop ->
            ok
    end.

%% A pid of another node, decoded from the external term format
%% (NEW_PID_EXT with the node name 'other@host').
remote_pid() ->
    Node = <<"other@host">>,
    binary_to_term(<<131, 88, 119, (byte_size(Node)), Node/binary,
                     0:32, 0:32, 1:32>>).

%% Runs Fun with every log event of the node sent to this process instead of
%% the default handler; returns the events as {Level, Text}, oldest first.
capture_log(Fun) ->
    Id = erlmcp_flow_test_capture,
    {ok, #{level := DefaultLevel}} = logger:get_handler_config(default),
    #{level := Primary} = logger:get_primary_config(),
    ok = logger:set_handler_config(default, level, none),
    ok = logger:set_primary_config(level, all),
    ok = logger:add_handler(Id, ?MODULE, #{level => all, config => #{pid => self()}}),
    try
        Fun(),
        %% the handler runs in the logging process: a round trip through
        %% logger's own server is not needed, the events are already sent
        collect_log([])
    after
        _ = logger:remove_handler(Id),
        ok = logger:set_primary_config(level, Primary),
        ok = logger:set_handler_config(default, level, DefaultLevel)
    end.

collect_log(Acc) ->
    receive {erlmcp_flow_test_log, Level, Text} -> collect_log([{Level, Text} | Acc])
    after 100 -> lists:reverse(Acc)
    end.

%% @private The capture handler.
log(#{level := Level} = Event, #{config := #{pid := Pid}}) ->
    Text = lists:flatten(logger_formatter:format(Event, #{single_line => true, template => [msg]})),
    Pid ! {erlmcp_flow_test_log, Level, Text},
    ok.

%% Kills the registry and waits until its successor runs and `Ready()' holds
%% (say, the agents registered again).
restart_registry(Ready) ->
    Old = whereis(erlmcp_flow_registry),
    exit(Old, kill),
    wait_until(fun() ->
                       case whereis(erlmcp_flow_registry) of
                           undefined -> false;
                           New -> New =/= Old andalso Ready()
                       end
               end).

%% The init_per_suite of a suite that needs an optional library (gproc,
%% telemetry), which erlmcp_flow does not ship: `Config' with the library
%% started; without it the suite fails, unless it was opted out by name
%% (`FLOW_TEST_SKIP', see require/3).
start_optional(App, Config) ->
    Why = lists:flatten(
            io_lib:format("~s is not on the code path (erlmcp_flow does not ship it): run with "
                          "ERL_LIBS=<a directory holding ~s/ebin> to include this suite", [App, App])),
    case require(App, fun() -> code:which(App) =/= non_existing end, Why) of
        ok ->
            logger:set_primary_config(level, critical),
            {ok, _} = application:ensure_all_started(App),
            Config;
        {skip, _} = Skip ->
            Skip
    end.

%% What a suite or test needs from the machine, named (`mcp', `python',
%% `chromium', `epmd', `gproc', `telemetry', `w3c'): `ok' when `Available()'
%% says it is there; `{skip, Why}' when it was opted out by name in the
%% environment variable `FLOW_TEST_SKIP' (a comma-separated list, printed by
%% `make test' in its summary); else the test FAILS with `Why'. A missing
%% dependency is never a silent skip: `make test' installs what it needs
%% (.ci/setup).
require(Name, Available, Why) ->
    case opted_out(Name) of
        true ->
            {skip, lists:flatten(io_lib:format("~s opted out by FLOW_TEST_SKIP (~s)", [Name, Why]))};
        false ->
            case Available() of
                true -> ok;
                false -> error({missing_test_dependency, Name, Why})
            end
    end.

%% Whether `Name' is in `FLOW_TEST_SKIP'.
opted_out(Name) ->
    Names = string:lexemes(os:getenv("FLOW_TEST_SKIP", ""), ", "),
    lists:member(atom_to_list(Name), Names).

%% Runs the executable `Exe' with `Args' to its end: `{ExitStatus, Output}'
%% (standard error included).
run_exe(Exe, Args) ->
    P = open_port({spawn_executable, Exe}, [{args, Args}, exit_status, binary, stderr_to_stdout]),
    collect(P, <<>>).

collect(P, Acc) ->
    receive
        {P, {data, D}} -> collect(P, <<Acc/binary, D/binary>>);
        {P, {exit_status, S}} -> {S, Acc}
    after 60000 -> error({timeout, P})
    end.

%% The repository root: the first directory above this module's beam
%% (wherever rebar3 put it), or the working directory, that holds `Marker'.
repo_root(Marker) ->
    Dir = filename:dirname(filename:absname(code:which(?MODULE))),
    Ups = [filename:join([Dir | lists:duplicate(N, "..")]) || N <- lists:seq(0, 8)],
    hd([D || D <- ["." | Ups], filelib:is_regular(filename:join(D, Marker))]).

%% A loopback port nobody listens on (it was free a moment ago).
closed_port() ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(L),
    ok = gen_tcp:close(L),
    Port.

%% A certificate authority of each side and their certificates, as PEM files
%% in `Dir': the server's (names localhost, this host's name and 127.0.0.1)
%% and a client's.
%% `server_cacerts' is what the server trusts (the client's CA),
%% `client_cacerts' what the client trusts (the server's CA).
tls_files(Dir) ->
    ok = filelib:ensure_path(Dir),
    %% the names a client may reach this machine by: localhost, and its own
    %% host name (distributed Erlang's nodes name their host)
    {ok, Host} = inet:gethostname(),
    Names = lists:usort(["localhost", Host, net_adm:localhost()]),
    San = {'Extension', {2, 5, 29, 17}, false,
           [{dNSName, N} || N <- Names] ++ [{iPAddress, [127, 0, 0, 1]}]},
    Key = [{key, {namedCurve, secp256r1}}, {digest, sha256}],
    #{server_config := Server, client_config := Client} =
        public_key:pkix_test_data(#{server_chain => #{root => Key, intermediates => [],
                                                      peer => [{extensions, [San]} | Key]},
                                    client_chain => #{root => Key, intermediates => [], peer => Key}}),
    Write = fun(Name, Entries) ->
                    File = filename:join(Dir, Name),
                    ok = file:write_file(File, public_key:pem_encode(Entries)),
                    File
            end,
    Files = fun(Side, Config) ->
                    KeyEntry = case proplists:get_value(key, Config) of
                                   {KeyType, Der} when is_binary(Der) -> {KeyType, Der, not_encrypted};
                                   Record -> public_key:pem_entry_encode(element(1, Record), Record)
                               end,
                    #{cert => Write(Side ++ "_cert.pem", [{'Certificate', proplists:get_value(cert, Config),
                                                           not_encrypted}]),
                      key => Write(Side ++ "_key.pem", [KeyEntry]),
                      cacerts => Write(Side ++ "_cacerts.pem",
                                       [{'Certificate', C, not_encrypted}
                                        || C <- proplists:get_value(cacerts, Config)])}
            end,
    #{server => Files("server", Server), client => Files("client", Client)}.

%% An agent standing in for an MCP server behind erlmcp_flow (the tool
%% `relay'): during a call from a session it sends progress for the token it
%% was given, a debug and a warning log message, and a sampling request
%% (server id 9; `arguments => #{ask => Method}' asks another thing); with
%% `arguments => #{cancel => true}' it then gives that
%% request up (`notifications/cancelled') and answers at once, else it waits
%% for the session's answer and answers the call with what it got:
%% "sampled: TEXT", "refused: CODE" or "no answer".
relaying_agent() ->
    receive
        {execute_task, #{tool := <<"relay">>} = Task, _Ctx, From, Ref} ->
            Answer = case Task of
                         #{mcp := #{relay := {Pid, CallRef}, progress_token := Token}} ->
                             relay_call(Pid, CallRef, Token, maps:get(arguments, Task, #{}));
                         _ ->
                             <<"no session">>
                     end,
            From ! {task_result, Ref, {ok, #{<<"content">> => [#{<<"type">> => <<"text">>,
                                                                 <<"text">> => Answer}]}}}
    end,
    relaying_agent().

relay_call(Pid, CallRef, Token, Args) ->
    %% answers to requests of earlier calls given up: not this call's
    Flush = fun F() -> receive {mcp_client_answer, _, _} -> F() after 0 -> ok end end,
    Flush(),
    Note = fun(M, P) -> Pid ! {mcp_relay, CallRef, {notification, M, P}} end,
    _ = Token =/= undefined andalso
        Note(<<"notifications/progress">>, #{<<"progressToken">> => Token, <<"progress">> => 1}),
    Note(<<"notifications/message">>, #{<<"level">> => <<"debug">>, <<"data">> => <<"quiet">>}),
    Note(<<"notifications/message">>, #{<<"level">> => <<"warning">>, <<"data">> => <<"loud">>}),
    Pid ! {mcp_relay, CallRef, {request, self(), 9, maps:get(<<"ask">>, Args, <<"sampling/createMessage">>), #{}}},
    case Args of
        #{<<"cancel">> := true} ->
            Pid ! {mcp_relay, CallRef, {cancelled, self(), 9, <<"gave up">>}},
            <<"gave up">>;
        _ ->
            receive
                {mcp_client_answer, 9, {ok, #{<<"content">> := #{<<"text">> := T}}}} ->
                    <<"sampled: ", T/binary>>;
                {mcp_client_answer, 9, {ok, _}} ->
                    <<"answered">>;
                {mcp_client_answer, 9, {error, Code, _, _}} ->
                    <<"refused: ", (integer_to_binary(Code))/binary>>
            after 5000 -> <<"no answer">>
            end
    end.
