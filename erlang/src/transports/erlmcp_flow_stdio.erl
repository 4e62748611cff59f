%% @doc JSON-RPC 2.0 over standard input and output: `bin/erlmcp-flow stdio'
%% starts a node that reads requests line by line from standard input and
%% writes each response as one line to standard output; logs go to standard
%% error. Requests are served concurrently (responses carry their ids). At
%% the end of input it answers what is in flight and the node exits 0. A
%% line past `transports.max_message_bytes' is answered -32012 (with the
%% request's id when its first bytes hold it) and discarded as it is read:
%% only its first 64 KiB are kept, so memory stays flat whatever its length.
-module(erlmcp_flow_stdio).

-export([main/0]).
-export([run/2]).
-export([serve/2]).
-export([out/2]).
-export([new_line/0]).
-export([piece/3]).

-export_type([line/0]).

-type line() :: {non_neg_integer(), iodata()} | {over, non_neg_integer(), binary()}.

%% The first bytes of a line past the limit that are kept (its id is there).
-define(HEAD, 65536).

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
    loop(Io, Max, new_line(), 0).

%% `Acc': the line so far (`piece/3'); `Busy': requests being served.
loop(Port, Max, Acc, Busy) ->
    receive
        {Port, {data, {noeol, Piece}}} ->
            loop(Port, Max, piece(Piece, Acc, Max), Busy);
        {Port, {data, {eol, Piece}}} ->
            case piece(Piece, Acc, Max) of
                {over, Size, Head} ->
                    out(Port, erlmcp_flow_jsonrpc:too_large(Max, Size, Head)),
                    loop(Port, Max, new_line(), Busy);
                {_, Pieces} ->
                    loop(Port, Max, new_line(), Busy + serve(iolist_to_binary(Pieces)))
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

%% @private A line being read: its bytes while within the limit; past it
%% only its first bytes (where a request's id is) and its size, the rest
%% discarded as it comes, so that memory stays flat whatever the line.
-spec new_line() -> line().
new_line() ->
    {0, []}.


%% @private One more piece of the line.
-spec piece(binary(), line(), pos_integer()) -> line().
piece(P, {N, Pieces}, Max) when N + byte_size(P) =< Max ->
    {N + byte_size(P), [Pieces, P]};
piece(P, {N, Pieces}, _Max) ->
    All = iolist_to_binary([Pieces, binary:part(P, 0, min(byte_size(P), ?HEAD))]),
    {over, N + byte_size(P), binary:part(All, 0, min(byte_size(All), ?HEAD))};
piece(P, {over, N, Head}, _Max) ->
    {over, N + byte_size(P), Head}.

%% @private One line out: to standard output, or to a test's sink.
-spec out(port() | {sink, pid()}, binary()) -> ok.
out({sink, Pid}, Bin) ->
    Pid ! {stdout, Bin},
    ok;
out(Port, Bin) ->
    true = port_command(Port, [Bin, $\n]),
    ok.
