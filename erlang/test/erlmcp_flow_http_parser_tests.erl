%% The HTTP parser's fuzz target and properties (PropEr): whatever bytes come,
%% and however they are cut into reads, the parser answers one of its
%% shapes and never raises; valid requests, pipelined and cut anywhere, come
%% back exactly. `HTTP_FUZZ_CASES=N' runs more cases (default 1000 each).
-module(erlmcp_flow_http_parser_tests).

-include_lib("proper/include/proper.hrl").
-include_lib("eunit/include/eunit.hrl").

-define(LIMITS, #{max_body => 4096, max_line => 512, max_headers => 16}).

cases() ->
    case os:getenv("HTTP_FUZZ_CASES") of
        false -> 1000;
        N -> list_to_integer(N)
    end.

props_test_() ->
    [{timeout, 600,
      {atom_to_list(P), ?_assert(proper:quickcheck(?MODULE:P(), [{numtests, cases()}, quiet,
                                                                 {to_file, user}]))}}
     || P <- [prop_valid_requests_come_back, prop_any_bytes_answer, prop_mutations_answer]].

%%--------------------------------------------------------------------
%% Properties
%%--------------------------------------------------------------------

%% Requests serialized, pipelined and fed in random pieces come back, in
%% order, as they were.
prop_valid_requests_come_back() ->
    ?FORALL({Reqs, Cuts}, {non_empty(list(request())), list(pos_integer())},
            begin
                Bytes = iolist_to_binary([serialize(R) || R <- Reqs]),
                Got = feed(pieces(Bytes, Cuts), erlmcp_flow_http_parser:new(?LIMITS), []),
                Want = [expected(R) || R <- Reqs],
                ?WHENFAIL(io:format("~p~nwant ~p~ngot ~p~n", [Bytes, Want, Got]), Got =:= Want)
            end).

%% Any bytes at all: an allowed answer, never an exception.
prop_any_bytes_answer() ->
    ?FORALL({Bytes, Cuts}, {oneof([binary(), fragments()]), list(pos_integer())},
            shape(feed_all(pieces(Bytes, Cuts)))).

%% Valid requests with bytes changed, cut, inserted: an allowed answer.
prop_mutations_answer() ->
    ?FORALL({Reqs, Edits, Cuts}, {non_empty(list(request())), list(edit()), list(pos_integer())},
            begin
                Bytes = lists:foldl(fun mutate/2, iolist_to_binary([serialize(R) || R <- Reqs]), Edits),
                shape(feed_all(pieces(Bytes, Cuts)))
            end).

%%--------------------------------------------------------------------
%% Generators
%%--------------------------------------------------------------------

request() ->
    ?LET({Method, Path, Query, Headers, Body, Chunked, Chunks},
         {oneof([<<"GET">>, <<"POST">>, <<"PUT">>, <<"DELETE">>, <<"PATCH">>]),
          path(), oneof([<<>>, token_bin()]), ?LET(Hs, list(header()), lists:sublist(Hs, 10)),
          ?LET(B, binary(), binary:part(B, 0, min(byte_size(B), 1000))),
          boolean(), list(range(1, 64))},
         #{method => Method, path => Path, query => Query, headers => Headers, body => Body,
           chunked => Chunked, chunks => Chunks}).

path() ->
    ?LET(Segments0, list(token_bin()),
         begin
             Segments = lists:sublist(Segments0, 8),
             iolist_to_binary([[$/, S] || S <- Segments] ++ [<<"/">> || Segments =:= []])
         end).

token_bin() ->
    ?LET(Cs, non_empty(list(oneof([range($a, $z), range($A, $Z), range($0, $9), $-, $_, $.]))),
         list_to_binary(lists:sublist(Cs, 20))).

header() ->
    ?LET({N, V}, {token_bin(), value()}, {<<"x-", N/binary>>, V}).

value() ->
    ?LET(Cs, list(oneof([range(16#21, 16#7E), $\s])), string:trim(list_to_binary(lists:sublist(Cs, 40)))).

%% Bytes made of HTTP's own pieces in any order: the framing words, line
%% ends, digits, spaces, random bytes.
fragments() ->
    ?LET(Fs, list(oneof([<<"GET / HTTP/1.1\r\n">>, <<"POST /rpc HTTP/1.1\r\n">>, <<"HTTP/1.0">>,
                         <<"Host: h\r\n">>, <<"Content-Length: ">>, <<"Transfer-Encoding: ">>,
                         <<"chunked">>, <<"gzip, ">>, <<"Expect: 100-continue\r\n">>,
                         <<"Connection: close\r\n">>, <<"\r\n">>, <<"\n">>, <<"\r">>, <<":">>,
                         <<" ">>, <<"\t">>, <<";ext=1">>, <<"0\r\n\r\n">>, <<"ffffffffffffffff">>,
                         ?LET(N, range(0, 5000), integer_to_binary(N)),
                         ?LET(N, range(0, 5000), integer_to_binary(N, 16)),
                         binary()])),
         iolist_to_binary(Fs)).

edit() ->
    oneof([{flip, pos_integer(), range(0, 255)}, {cut, pos_integer()},
           {insert, pos_integer(), binary()}, {drop, pos_integer(), range(1, 8)}]).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

serialize(#{method := M, path := P, query := Q, headers := Hs, body := B, chunked := C, chunks := Sizes}) ->
    Target = case Q of
                 <<>> -> P;
                 _ -> <<P/binary, "?", Q/binary>>
             end,
    Framing = case C of
                  true -> [<<"Transfer-Encoding: chunked\r\n">>];
                  false -> [<<"Content-Length: ">>, integer_to_binary(byte_size(B)), <<"\r\n">>]
              end,
    Body = case C of
               true -> chunks(B, Sizes);
               false -> B
           end,
    [M, $\s, Target, <<" HTTP/1.1\r\nHost: h\r\n">>, [[N, <<": ">>, V, <<"\r\n">>] || {N, V} <- Hs],
     Framing, <<"\r\n">>, Body].

chunks(<<>>, _) ->
    <<"0\r\n\r\n">>;
chunks(B, Sizes) ->
    {Size, Rest} = case Sizes of
                       [S | R] -> {min(S, byte_size(B)), R};
                       [] -> {byte_size(B), []}
                   end,
    <<Chunk:Size/binary, More/binary>> = B,
    [integer_to_binary(Size, 16), <<"\r\n">>, Chunk, <<"\r\n">> | chunks(More, Rest)].

expected(#{method := M, path := P, query := Q, headers := Hs, body := B, chunked := C}) ->
    Framing = case C of
                  true -> [{<<"transfer-encoding">>, <<"chunked">>}];
                  false -> [{<<"content-length">>, integer_to_binary(byte_size(B))}]
              end,
    {method(M), P, Q, [{<<"host">>, <<"h">>} | [{lower(N), V} || {N, V} <- Hs]] ++ Framing, B}.

method(<<"GET">>) -> 'GET';
method(<<"POST">>) -> 'POST';
method(<<"PUT">>) -> 'PUT';
method(<<"DELETE">>) -> 'DELETE';
method(Other) -> Other.

lower(B) -> string:lowercase(B).

%% `Bytes' cut at the positions `Cuts' names (each taken modulo what is left).
pieces(<<>>, _) -> [];
pieces(Bytes, []) -> [Bytes];
pieces(Bytes, [C | Cs]) ->
    N = 1 + C rem byte_size(Bytes),
    <<Piece:N/binary, Rest/binary>> = Bytes,
    [Piece | pieces(Rest, Cs)].

%% The requests parsed from the pieces, `{Method, Path, Query, Headers,
%% Body}' each; an error or a failed request ends the list with it.
feed([], P, Acc) ->
    drain(P, Acc);
feed([Piece | Rest], P, Acc) ->
    case erlmcp_flow_http_parser:parse(Piece, P) of
        {request, R, P1} -> feed(Rest, P1, [summary(R) | Acc]) ++ [];
        {more, P1} -> feed(Rest, P1, Acc);
        {continue, P1} -> feed(Rest, P1, Acc);
        {error, S, W} -> lists:reverse([{error, S, W} | Acc])
    end.

%% Requests already whole in the parser's buffer.
drain(P, Acc) ->
    case erlmcp_flow_http_parser:parse(<<>>, P) of
        {request, R, P1} -> drain(P1, [summary(R) | Acc]);
        _ -> lists:reverse(Acc)
    end.

summary(#{method := M, path := P, query := Q, headers := H, body := B}) ->
    {M, P, Q, H, B}.

%% Every answer the parser gives the pieces (it never raises).
feed_all(Pieces) ->
    try feed(Pieces, erlmcp_flow_http_parser:new(?LIMITS), [])
    catch C:R:S -> {raised, C, R, S}
    end.

shape({raised, _, _, _} = R) ->
    io:format("raised: ~p~n", [R]),
    false;
shape(Results) when is_list(Results) ->
    lists:all(fun({error, S, W}) -> lists:member(S, [400, 413, 414, 417, 431, 501, 505]) andalso is_binary(W);
                 ({M, P, Q, H, B}) -> (is_atom(M) orelse is_binary(M)) andalso is_binary(P)
                                          andalso is_binary(Q) andalso is_list(H) andalso is_binary(B)
                                          andalso byte_size(B) =< 4096
              end, Results).

mutate(_, <<>>) -> <<>>;
mutate({flip, At, Byte}, B) ->
    N = At rem byte_size(B),
    <<Pre:N/binary, _, Post/binary>> = B,
    <<Pre/binary, Byte, Post/binary>>;
mutate({cut, At}, B) ->
    binary:part(B, 0, At rem byte_size(B));
mutate({insert, At, Ins}, B) ->
    N = At rem byte_size(B),
    <<Pre:N/binary, Post/binary>> = B,
    <<Pre/binary, Ins/binary, Post/binary>>;
mutate({drop, At, Len}, B) ->
    N = At rem byte_size(B),
    L = min(Len, byte_size(B) - N),
    <<Pre:N/binary, _:L/binary, Post/binary>> = B,
    <<Pre/binary, Post/binary>>.

%% A header value of obs-text that is not UTF-8, with whitespace around it
%% (found by prop_mutations_answer): read as bytes, never a crash.
obs_text_value_test() ->
    P = erlmcp_flow_http_parser:new(#{max_body => 1024}),
    Req = <<"GET / HTTP/1.1\r\nhost: a\r\nx-odd: \t", 172, 227, 245, " \r\n\r\n">>,
    ?assertMatch({request, #{headers := [{<<"host">>, <<"a">>}, {<<"x-odd">>, <<172, 227, 245>>}]}, _},
                 erlmcp_flow_http_parser:parse(Req, P)).

%% Expect, Transfer-Encoding and Connection values that are not UTF-8: their
%% tokens compared byte by byte, answered 417 / 501-or-400 / read, never a crash.
obs_text_tokens_test() ->
    P = erlmcp_flow_http_parser:new(#{max_body => 1024}),
    ?assertMatch({error, 417, _},
                 erlmcp_flow_http_parser:parse(<<"GET / HTTP/1.1\r\nhost: a\r\nexpect: ", 172, "\r\n\r\n">>, P)),
    ?assertMatch({error, _, _},
                 erlmcp_flow_http_parser:parse(<<"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: ", 172,
                                                 "\r\n\r\n">>, P)),
    ?assertMatch({request, #{keep_alive := true}, _},
                 erlmcp_flow_http_parser:parse(<<"GET / HTTP/1.1\r\nhost: a\r\nconnection: ", 172,
                                                 "\r\n\r\n">>, P)).
