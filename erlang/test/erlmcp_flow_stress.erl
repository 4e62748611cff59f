%% The stress run `make test-asan' gives the NIF built with AddressSanitizer
%% (native/asan-stress): rounds of starting the application, running tasks
%% from many callers on every strategy (tracing, quorum-free retries, failing
%% and dying agents, routed tasks whose waiters are killed), and, while they
%% run, one of: stopping the application, reloading its Erlang modules,
%% trying to load the NIF module again, or (while stopped) deleting and
%% loading the NIF module afresh. Whatever the order, the VM must stay up and
%% every caller must get an answer or a named error; a memory error stops
%% the VM with AddressSanitizer's report.
-module(erlmcp_flow_stress).

-export([main/1, run/1]).

-define(STRATEGIES, [round_robin, least_connections, weighted, consistent_hash, p2c_ewma,
                     q_learning]).
-define(CALLERS, 16).

%% Runs `Rounds' rounds and halts: 0 when every round held, 1 otherwise.
-spec main([string()] | pos_integer()) -> no_return().
main([Rounds]) ->
    main(list_to_integer(Rounds));
main(Rounds) ->
    _ = logger:set_primary_config(level, critical),
    Status = try run(Rounds) of
                 Report ->
                     io:format("stress: ~p~n", [Report]),
                     0
             catch
                 Class:Reason:Stack ->
                     io:format("stress: FAILED ~p:~p~n~p~n", [Class, Reason, Stack]),
                     1
             end,
    halt(Status).

%% The rounds; a report of what they did.
-spec run(pos_integer()) -> map().
run(Rounds) ->
    Acts = [stop_app, reload_erlang, reload_nif, fresh_nif],
    Results = [round(I, lists:nth(1 + I rem length(Acts), Acts)) || I <- lists:seq(1, Rounds)],
    Sum = fun(K) -> lists:sum([maps:get(K, R) || R <- Results]) end,
    #{rounds => Rounds, answered => Sum(answered), errors => Sum(errors),
      nif_reload_refused => Sum(nif_reload_refused), nif_loaded_afresh => Sum(nif_loaded_afresh),
      modules_reloaded => Sum(modules_reloaded)}.

round(I, Act) ->
    T0 = erlang:monotonic_time(millisecond),
    io:format("round ~b: ~p~n", [I, Act]),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    ok = erlmcp_flow_q_learning:reset(),
    Agents = agents(I),
    Count = atomics:new(1, []),
    Callers = callers(I, Count),
    %% tasks through before the act, and after it
    wait_answers(Count, 20 * ?CALLERS),
    Done = act(Act, Callers),
    wait_answers(Count, atomics:get(Count, 1) + 20 * ?CALLERS),
    Tallies = stop_callers(Callers),
    [exit(A, kill) || A <- Agents],
    case Act of
        stop_app -> ok;
        _ -> ok = application:stop(erlmcp_flow)
    end,
    Bad = lists:append([B || #{bad := B} <- Tallies]),
    Bad =:= [] orelse error({bad_answers, I, Act, lists:sublist(Bad, 5)}),
    io:format("round ~b: ~b ms~n", [I, erlang:monotonic_time(millisecond) - T0]),
    Done#{answered => lists:sum([N || #{ok := N} <- Tallies]),
          errors => lists:sum([N || #{error := N} <- Tallies])}.

%% Agents that answer, fail, reject, die, or answer late.
agents(I) ->
    Kinds = [ok, ok, ok, slow, error, reject, crash, ok],
    [begin
         Pid = spawn(fun() -> agent(Kind) end),
         Id = iolist_to_binary(io_lib:format("r~b-~b-~p", [I, N, Kind])),
         ok = erlmcp_flow:register_agent(Id, Pid, [<<"work">>]),
         Pid
     end || {N, Kind} <- lists:zip(lists:seq(1, length(Kinds)), Kinds)].

agent(Kind) ->
    receive
        {execute_task, Task, _Ctx, From, Ref} ->
            case Kind of
                ok -> From ! {task_result, Ref, {ok, Task}};
                slow -> timer:sleep(3), From ! {task_result, Ref, {ok, Task}};
                error -> From ! {task_result, Ref, {error, failed}};
                reject -> From ! {task_result, Ref, {reject, bad_task}};
                crash -> case rand:uniform(20) of
                             1 -> exit(crashed);
                             _ -> From ! {task_result, Ref, {ok, Task}}
                         end
            end,
            agent(Kind);
        {cancel_task, _} ->
            agent(Kind)
    end.

%% Callers running tasks until told to stop; each tallies its answers
%% (keeping any malformed one) and counts them in `Count'. A quarter route
%% tasks, whose waiters outlive the call.
callers(I, Count) ->
    [element(1, spawn_monitor(fun() -> caller(I, N, Count, #{ok => 0, error => 0, bad => []}) end))
     || N <- lists:seq(1, ?CALLERS)].

caller(I, N, Count, Tally) ->
    receive
        {stop, From} ->
            From ! {tally, self(), Tally};
        {pause, From} ->
            From ! {paused, self()},
            receive resume -> caller(I, N, Count, Tally) end
    after 0 ->
        K = maps:get(ok, Tally) + maps:get(error, Tally),
        Strategy = lists:nth(1 + (N + K) rem length(?STRATEGIES), ?STRATEGIES),
        Req = #{capabilities => [<<"work">>], strategy => Strategy,
                sticky_key => integer_to_binary(K), task_class => N rem 3},
        Answer = case N rem 4 of
                     0 ->
                         case erlmcp_flow:route_task(#{n => N}, Req) of
                             {ok, Id, _Ctx} -> {ok, Id, #{}};
                             Other -> Other
                         end;
                     _ ->
                         erlmcp_flow:execute(#{round => I, n => N}, Req,
                                             #{timeout => 200, error_meta => N rem 2 =:= 0})
                 end,
        atomics:add(Count, 1, 1),
        Tally1 = case Answer of
                     {ok, _, M} when is_map(M) -> maps:update_with(ok, fun(V) -> V + 1 end, Tally);
                     {error, R} when R =/= undefined -> maps:update_with(error, fun(V) -> V + 1 end, Tally);
                     {error, _, M} when is_map(M) -> maps:update_with(error, fun(V) -> V + 1 end, Tally);
                     _ -> Tally#{bad := [Answer | maps:get(bad, Tally)]}
                 end,
        %% a node without agents answers at once: yield, so that the
        %% callers do not starve the rest
        case Answer of
            {error, _} -> erlang:yield();
            _ -> ok
        end,
        caller(I, N, Count, Tally1)
    end.

%% Waits until the callers answered `N' tasks in all.
wait_answers(Count, N) ->
    wait_answers(Count, N, 20000).

wait_answers(Count, N, 0) ->
    error({callers_stuck, atomics:get(Count, 1), N});
wait_answers(Count, N, Ms) ->
    case atomics:get(Count, 1) >= N of
        true -> ok;
        false -> timer:sleep(1), wait_answers(Count, N, Ms - 1)
    end.

stop_callers(Callers) ->
    [C ! {stop, self()} || C <- Callers],
    [receive
         {tally, C, T} -> T;
         {'DOWN', _, process, C, Why} -> error({caller_died, C, Why})
     after 30000 ->
             error({caller_stuck, C, erlang:process_info(C, [current_stacktrace, status,
                                                              message_queue_len])})
     end || C <- Callers].

%% The act done while tasks run.
act(fresh_nif, Callers) ->
    %% no caller in the NIF module while it is deleted and loaded again (a
    %% caller would load it back itself, and OTP 25's code server can lose
    %% the answer to one of two loads of a module with an on_load at once)
    [C ! {pause, self()} || C <- Callers],
    [receive {paused, C} -> ok end || C <- Callers],
    Done = act(fresh_nif),
    [C ! resume || C <- Callers],
    Done;
act(Act, _Callers) ->
    act(Act).

act(stop_app) ->
    %% the registry (and with it the router) goes while callers hold
    %% decisions and waiters hold leases
    ok = application:stop(erlmcp_flow),
    counts(#{});
act(reload_erlang) ->
    Mods = [M || {M, _} <- code:all_loaded(), M =/= erlmcp_flow_nif, M =/= ?MODULE,
                 lists:prefix("erlmcp_flow", atom_to_list(M))],
    Reloaded = [M || M <- Mods, code:soft_purge(M), {module, M} =:= code:load_file(M)],
    counts(#{modules_reloaded => length(Reloaded)});
act(reload_nif) ->
    %% rustler refuses an upgrade: the on_load fails, the old code stays
    ok = soft_purged(erlmcp_flow_nif, 1000),
    {error, on_load_failure} = code:load_file(erlmcp_flow_nif),
    true = erlang:function_exported(erlmcp_flow_nif, router_stats, 1),
    counts(#{nif_reload_refused => 1});
act(fresh_nif) ->
    %% stopped, the NIF module deleted and purged, loaded again: the library
    %% (still mapped) is loaded afresh and the application starts on it
    ok = application:stop(erlmcp_flow),
    true = code:delete(erlmcp_flow_nif),
    ok = soft_purged(erlmcp_flow_nif, 1000),
    {module, erlmcp_flow_nif} = code:load_file(erlmcp_flow_nif),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    counts(#{nif_loaded_afresh => 1}).

counts(M) ->
    maps:merge(#{modules_reloaded => 0, nif_reload_refused => 0, nif_loaded_afresh => 0}, M).

%% Old code of `M' gone, once no process runs it (callers leave NIF calls in
%% microseconds).
soft_purged(M, 0) ->
    error({old_code_in_use, M});
soft_purged(M, N) ->
    case code:soft_purge(M) of
        true -> ok;
        false -> timer:sleep(1), soft_purged(M, N - 1)
    end.
