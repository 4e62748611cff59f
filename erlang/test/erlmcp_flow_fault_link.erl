%% Distributed Erlang links with latency, for tests and benches of several
%% nodes on one machine, whose kernel may have no `netem'.
%%
%% Started with `-epmd_module erlmcp_flow_fault_link', a node asks this
%% module, not erl_epmd, which port another node listens on. The answer is
%% the port of a relay on this node (one per peer node, on the address the
%% peer was asked at), which passes every byte on to the real port, each
%% chunk after the link's delay plus a uniform jitter, in order (a chunk
%% never overtakes the one before it, as on a TCP stream). Everything else
%% is erl_epmd's.
%%
%% The relay's connection to the node itself (the node's own socket to the
%% relay's port, see `ports/0') is a real TCP connection over loopback: a
%% packet filter dropping its packets (nftables' `numgen random' for loss,
%% one direction for a one-way partition, on and off for a flapping link)
%% makes real TCP losses, retransmissions and stalls on that link.
%%
%% `set/2' sets a link's delay and jitter (milliseconds) on this node; the
%% relay applies them to both directions of the links this node opened, so
%% a link's round trip gains twice the delay. `nft_table/1', `nft/1' and
%% `ports_set/1' are the packet filter's side, for the node that drives the
%% faults (it needs root and nft).
-module(erlmcp_flow_fault_link).

%% the epmd module's functions
-export([start_link/0, register_node/2, register_node/3, port_please/2, port_please/3,
         names/0, names/1, address_please/3, listen_port_please/2]).
%% the links' control
-export([set/2, ports/0]).
%% the packet filter
-export([nft_table/1, nft_drop_table/1, nft/1, ports_set/1]).
%% the relay's processes
-export([relay_loop/3, reader/4, writer/2]).

-define(TAB, erlmcp_flow_fault_link).

%%--------------------------------------------------------------------
%% epmd module
%%--------------------------------------------------------------------

start_link() -> erl_epmd:start_link().
register_node(Name, Port) -> erl_epmd:register_node(Name, Port).
register_node(Name, Port, Family) -> erl_epmd:register_node(Name, Port, Family).
names() -> erl_epmd:names().
names(Host) -> erl_epmd:names(Host).
address_please(Name, Host, Family) -> erl_epmd:address_please(Name, Host, Family).
listen_port_please(Name, Host) -> erl_epmd:listen_port_please(Name, Host).

port_please(Name, Ip) ->
    port_please(Name, Ip, infinity).

port_please(Name, Ip, Timeout) ->
    case erl_epmd:port_please(Name, Ip, Timeout) of
        {port, Real, Version} -> {port, relay(Name, Ip, Real), Version};
        Other -> Other
    end.

%%--------------------------------------------------------------------
%% Control
%%--------------------------------------------------------------------

%% @doc Sets the delay and jitter (ms) of the links to `Peer' (a node name,
%% or the name part of one).
-spec set(atom() | string(), #{delay_ms => non_neg_integer(), jitter_ms => non_neg_integer()}) -> ok.
set(Peer, Faults) ->
    ok = ensure_table(),
    true = ets:insert(?TAB, {{faults, name(Peer)}, maps:merge(#{delay_ms => 0, jitter_ms => 0}, Faults)}),
    ok.

%% @doc The relays this node opened: `[{PeerName, RelayPort}]'.
-spec ports() -> [{string(), inet:port_number()}].
ports() ->
    case ets:whereis(?TAB) of
        undefined -> [];
        _ -> lists:sort([{N, P} || {{relay, N}, P} <- ets:tab2list(?TAB)])
    end.

%%--------------------------------------------------------------------
%% The packet filter
%%--------------------------------------------------------------------

%% @doc A fresh nftables table `Table' (inet) with a chain `out' on the
%% output hook (which sees loopback's packets): `ok', or `error' when nft
%% is missing or refuses (not root).
-spec nft_table(string()) -> ok | error.
nft_table(Table) ->
    ok = nft_drop_table(Table),
    try
        nft(["add table inet ", Table]),
        nft(["add chain inet ", Table, " out { type filter hook output priority 0 ; }"])
    catch error:_ -> error
    end.

-spec nft_drop_table(string()) -> ok.
nft_drop_table(Table) ->
    _ = os:cmd("nft delete table inet " ++ Table ++ " 2>/dev/null"),
    ok.

%% @doc Runs one nft command (an iolist); an error names it and nft's words.
-spec nft(iodata()) -> ok.
nft(Parts) ->
    Out = os:cmd(lists:flatten(["nft '", Parts, "' 2>&1; echo $?"])),
    case lists:last(string:lexemes(Out, "\n")) of
        "0" -> ok;
        _ -> error({nft, lists:flatten(io_lib:format("~s", [Parts])), Out})
    end.

%% @doc Ports as an nft set: `{ P1, P2 }'.
-spec ports_set([inet:port_number()]) -> iodata().
ports_set(Ports) ->
    ["{ ", lists:join(", ", [integer_to_list(P) || P <- Ports]), " }"].

%%--------------------------------------------------------------------
%% The relays
%%--------------------------------------------------------------------

%% The relay for `Name' (started once, kept): its port.
relay(Name, Ip, Real) ->
    ok = ensure_table(),
    Key = {relay, name(Name)},
    case ets:lookup(?TAB, Key) of
        [{_, Port}] ->
            Port;
        [] ->
            Self = self(),
            {Pid, MRef} = spawn_monitor(
                            fun() ->
                                    {ok, L} = gen_tcp:listen(0, [binary, {ip, Ip}, {active, false},
                                                                  {reuseaddr, true}, {nodelay, true}]),
                                    {ok, Port} = inet:port(L),
                                    true = ets:insert(?TAB, {Key, Port}),
                                    Self ! {relay, self(), Port},
                                    relay_loop(L, {Ip, Real}, name(Name))
                            end),
            receive
                {relay, Pid, Port} -> erlang:demonitor(MRef, [flush]), Port;
                {'DOWN', MRef, process, Pid, Why} -> error({relay, Why})
            end
    end.

%% Accepts the node's connections and relays each to the real port.
relay_loop(L, Real, Peer) ->
    {ok, In} = gen_tcp:accept(L),
    Pid = spawn(fun() -> connection(In, Real, Peer) end),
    ok = gen_tcp:controlling_process(In, Pid),
    Pid ! go,
    relay_loop(L, Real, Peer).

connection(In, {Ip, Port}, Peer) ->
    receive go -> ok end,
    case gen_tcp:connect(Ip, Port, [binary, {active, false}, {nodelay, true}]) of
        {ok, Out} ->
            W1 = spawn_link(?MODULE, writer, [Out, queue:new()]),
            W2 = spawn_link(?MODULE, writer, [In, queue:new()]),
            process_flag(trap_exit, true),
            %% (monotonic time may be negative: the first chunk's floor is now)
            Now = erlang:monotonic_time(millisecond),
            R1 = spawn_link(?MODULE, reader, [In, W1, Peer, Now]),
            R2 = spawn_link(?MODULE, reader, [Out, W2, Peer, Now]),
            ok = gen_tcp:controlling_process(In, R1),
            ok = gen_tcp:controlling_process(Out, R2),
            R1 ! go,
            R2 ! go,
            %% either side closing ends both
            receive {'EXIT', _, _} -> ok end,
            gen_tcp:close(In),
            gen_tcp:close(Out),
            [exit(P, kill) || P <- [W1, W2, R1, R2]];
        {error, _} ->
            gen_tcp:close(In)
    end.

%% Reads chunks and hands each to the writer with the time it may go: now
%% plus the link's delay and jitter, never before the chunk before it.
reader(S, Writer, Peer, Last) ->
    receive go -> ok end,
    read(S, Writer, Peer, Last).

read(S, Writer, Peer, Last) ->
    case gen_tcp:recv(S, 0) of
        {ok, Data} ->
            #{delay_ms := D, jitter_ms := J} = faults(Peer),
            Now = erlang:monotonic_time(millisecond),
            At = max(Last, Now + D + case J of 0 -> 0; _ -> rand:uniform(J + 1) - 1 end),
            Writer ! {chunk, At, Data},
            read(S, Writer, Peer, At);
        {error, Why} ->
            exit({closed, Why})
    end.

writer(S, Q) ->
    case queue:peek(Q) of
        empty ->
            receive {chunk, At, Data} -> writer(S, queue:in({At, Data}, Q)) end;
        {value, {At, Data}} ->
            Wait = max(0, At - erlang:monotonic_time(millisecond)),
            receive
                {chunk, At1, Data1} -> writer(S, queue:in({At1, Data1}, Q))
            after Wait ->
                    case gen_tcp:send(S, Data) of
                        ok -> writer(S, queue:drop(Q));
                        {error, Why} -> exit({closed, Why})
                    end
            end
    end.

faults(Peer) ->
    case ets:lookup(?TAB, {faults, Peer}) of
        [{_, F}] -> F;
        [] -> #{delay_ms => 0, jitter_ms => 0}
    end.

ensure_table() ->
    case ets:whereis(?TAB) of
        undefined ->
            %% owned by a process of its own, as long as the node lives
            Self = self(),
            spawn(fun() ->
                          try ets:new(?TAB, [named_table, public, set, {read_concurrency, true}]) of
                              _ -> Self ! {table, self()}, receive never -> ok end
                          catch error:badarg -> Self ! {table, self()}
                          end
                  end),
            receive {table, _} -> ok end;
        _ ->
            ok
    end.

name(Node) when is_atom(Node) -> name(atom_to_list(Node));
name(Node) -> hd(string:split(Node, "@")).
