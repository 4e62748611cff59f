%% @doc JSON-RPC 2.0 over standard input and output: `bin/erlmcp-flow stdio'
%% starts a node that reads requests line by line from standard input and
%% writes each response as one line to standard output; logs go to standard
%% error. Requests are served concurrently (responses carry their ids). At
%% the end of input it answers what is in flight and the node exits 0. A
%% line past `transports.max_message_bytes' is answered -32012 and skipped.
-module(erlmcp_flow_stdio).

-export([main/0]).
-export([run/2]).
-export([serve/2]).
-export([out/2]).

%% @doc Runs the stdio transport until the end of input, then halts.
-spec main() -> no_return().
main() ->
    run(fun() -> ok end, fun serve/2).

%% @private A node speaking over its standard streams (this transport, and
%% the MCP one): the application started with its logs on standard error
%% (standard output carries the protocol only), `Prepare' run, then
%% `Serve(Port, MaxLineBytes)' over standard input and output; the node
%% halts with the status it returns (1 when the application cannot start).
-spec run(fun(() -> ok), fun((port(), pos_integer()) -> non_neg_integer())) -> no_return().
run(Prepare, Serve) ->
    _ = logger:update_handler_config(default, config, #{type => standard_error}),
    case application:ensure_all_started(erlmcp_flow) of
        {ok, _} ->
            ok = Prepare(),
            Max = erlmcp_flow_config:get(transports, max_message_bytes),
            Port = open_port({fd, 0, 1}, [binary, eof, {line, Max + 1}]),
            erlang:halt(Serve(Port, Max));
        {error, Reason} ->
            io:format(standard_error, "erlmcp_flow: ~p~n", [Reason]),
            erlang:halt(1)
    end.

%% @private Serves the lines that come from `Io' (standard input's port, or
%% `{sink, Pid}' in tests: lines sent as a port sends them, answers sent to
%% `Pid' as `{stdout, Line}') until its end; returns the exit status.
-spec serve(port() | {sink, pid()}, pos_integer()) -> non_neg_integer().
serve(Io, Max) ->
    loop(Io, Max, [], 0).

%% `Acc': the pieces of a line longer than the port's line buffer so far;
%% `Busy': requests being served.
loop(Port, Max, Acc, Busy) ->
    receive
        {Port, {data, {noeol, Piece}}} ->
            loop(Port, Max, [Acc, Piece], Busy);
        {Port, {data, {eol, Piece}}} ->
            Line = iolist_to_binary([Acc, Piece]),
            case byte_size(Line) > Max of
                true ->
                    out(Port, erlmcp_flow_jsonrpc:too_large(Max, byte_size(Line))),
                    loop(Port, Max, [], Busy);
                false ->
                    loop(Port, Max, [], Busy + serve(Line))
            end;
        {reply, Bin} ->
            Bin =:= <<>> orelse out(Port, Bin),
            loop(Port, Max, Acc, Busy - 1);
        {Port, eof} ->
            drain(Port, Busy)
    end.

%% At the end of input: the answers still to come, then exit 0.
drain(_Port, 0) ->
    0;
drain(Port, Busy) ->
    receive
        {reply, Bin} ->
            Bin =:= <<>> orelse out(Port, Bin),
            drain(Port, Busy - 1)
    end.

serve(<<>>) ->
    0;
serve(Line) ->
    Self = self(),
    %% linked: a request goes with the loop that reads its input
    _ = spawn_link(fun() ->
                      Decoded = erlmcp_flow_jsonrpc:decode(Line),
                      Handle = fun(M, P) -> erlmcp_flow_rpc:handle(M, P, #{transport => stdio}) end,
                      Out = try erlmcp_flow_jsonrpc:responses(Decoded, Handle) of
                                {reply, Bin} -> Bin;
                                noreply -> <<>>
                            catch _:_ ->
                                    erlmcp_flow_jsonrpc:response(
                                      null, {error, -32603, <<"Internal error">>, undefined})
                            end,
                      Self ! {reply, Out}
              end),
    1.

%% @private One line out: to standard output, or to a test's sink.
-spec out(port() | {sink, pid()}, binary()) -> ok.
out({sink, Pid}, Bin) ->
    Pid ! {stdout, Bin},
    ok;
out(Port, Bin) ->
    true = port_command(Port, [Bin, $\n]),
    ok.
