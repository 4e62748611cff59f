%% The baseline the design describes, written in plain Erlang to measure
%% erlmcp_flow against in the same run: one gen_server owns the Q-table (a
%% map), the circuit breakers (a map) and the round-robin cursor; agents are
%% looked up in ETS (a bag of {Capability, Pid}). A task is a call to the
%% server for an agent (round robin, or epsilon-greedy Q-learning over the
%% candidates whose breaker is closed), the task sent to the agent and its
%% answer awaited, then a cast back with the outcome, which updates the
%% Q-value and the breaker.
-module(erlmcp_flow_bench_plain).
-behaviour(gen_server).

-export([start/0, stop/0, add_agent/2, execute/3]).
-export([init/1, handle_call/3, handle_cast/2]).

-define(TAB, erlmcp_flow_bench_plain_agents).
-define(ALPHA, 0.1).
-define(EPSILON, 0.05).
-define(FAILURES_TO_OPEN, 5).

start() ->
    {ok, Pid} = gen_server:start({local, ?MODULE}, ?MODULE, [], []),
    Pid.

stop() ->
    gen_server:stop(?MODULE).

add_agent(Pid, Capability) ->
    true = ets:insert(?TAB, {Capability, Pid}),
    ok.

%% Routes `Task' to an agent holding `Capability' and returns its answer.
execute(Strategy, Capability, Task) ->
    case gen_server:call(?MODULE, {route, Strategy, Capability}) of
        {ok, Pid} ->
            Ref = make_ref(),
            T0 = erlang:monotonic_time(microsecond),
            Pid ! {execute_task, Task, #{}, self(), Ref},
            receive
                {task_result, Ref, Result} ->
                    Ms = (erlang:monotonic_time(microsecond) - T0) / 1000,
                    gen_server:cast(?MODULE, {done, Pid, element(1, Result) =:= ok, Ms}),
                    Result
            after 5000 ->
                gen_server:cast(?MODULE, {done, Pid, false, 5000}),
                {error, timeout}
            end;
        {error, _} = E ->
            E
    end.

init([]) ->
    _ = ets:new(?TAB, [named_table, public, bag, {read_concurrency, true}]),
    {ok, #{q => #{}, breakers => #{}, rr => 0}}.

handle_call({route, Strategy, Cap}, _From, #{q := Q, breakers := B, rr := RR} = S) ->
    Candidates = [P || {_, P} <- ets:lookup(?TAB, Cap),
                       maps:get(P, B, 0) < ?FAILURES_TO_OPEN],
    case Candidates of
        [] ->
            {reply, {error, no_agents_available}, S};
        _ ->
            N = length(Candidates),
            case Strategy of
                round_robin ->
                    {reply, {ok, lists:nth(RR rem N + 1, Candidates)}, S#{rr := RR + 1}};
                q_learning ->
                    Pick = case rand:uniform() < ?EPSILON of
                               true ->
                                   lists:nth(rand:uniform(N), Candidates);
                               false ->
                                   {_, Best} = lists:max([{maps:get(P, Q, 1.0), P}
                                                          || P <- Candidates]),
                                   Best
                           end,
                    {reply, {ok, Pick}, S}
            end
    end.

handle_cast({done, Pid, Ok, Ms}, #{q := Q, breakers := B} = S) ->
    Reward = case Ok of true -> 1.0 - min(Ms / 1000, 1.0); false -> -1.0 end,
    Old = maps:get(Pid, Q, 1.0),
    Failures = case Ok of true -> 0; false -> maps:get(Pid, B, 0) + 1 end,
    {noreply, S#{q := Q#{Pid => Old + ?ALPHA * (Reward - Old)},
                 breakers := B#{Pid => Failures}}}.
