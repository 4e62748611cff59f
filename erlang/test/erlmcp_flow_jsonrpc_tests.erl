-module(erlmcp_flow_jsonrpc_tests).

-include_lib("eunit/include/eunit.hrl").

%% tests/vectors/jsonrpc.json: the specification's examples and the limits,
%% through the NIF codec and a server of the examples' methods; each answer
%% compared, as JSON, with the one cargo checks.
vectors_test_() ->
    [{binary_to_list(maps:get(<<"name">>, Case)), fun() -> vector(Case) end}
     || Case <- erlmcp_flow_test_json:vectors("jsonrpc.json")].

vector(#{<<"request">> := Request, <<"response">> := Want} = Case) ->
    Limits = case Case of
                 #{<<"limits">> := L} -> maps:from_list([{binary_to_atom(K), V} || {K, V} <- maps:to_list(L)]);
                 _ -> #{max_message_bytes => 1048576, max_depth => 64, max_batch => 100}
             end,
    Decoded = erlmcp_flow_jsonrpc:decode(Request, Limits),
    case {erlmcp_flow_jsonrpc:responses(Decoded, fun call/2), Want} of
        {noreply, null} -> ok;
        {{reply, Bin}, _} -> ?assertEqual(Want, erlmcp_flow_test_json:decode(Bin))
    end.

%% The methods of the specification's examples.
call(<<"subtract">>, [X, Y]) when is_integer(X), is_integer(Y) -> {ok, X - Y};
call(<<"subtract">>, #{<<"minuend">> := X, <<"subtrahend">> := Y}) when is_integer(X), is_integer(Y) ->
    {ok, X - Y};
call(<<"subtract">>, _) -> {error, -32602, <<"Invalid params">>, undefined};
call(<<"sum">>, L) when is_list(L) ->
    case lists:all(fun is_integer/1, L) of
        true -> {ok, lists:sum(L)};
        false -> {error, -32602, <<"Invalid params">>, undefined}
    end;
call(<<"get_data">>, _) -> {ok, [<<"hello">>, 5]};
call(_, _) -> {error, -32601, <<"Method not found">>, undefined}.

%% JSON and Erlang terms, both ways.
mapping_test() ->
    {ok, Bin} = erlmcp_flow_jsonrpc:encode_json(#{a => [1, 2.5, <<"x">>, true, false, null, b],
                                                  <<"k">> => #{}, n => {json_number, <<"1e300">>}}),
    ?assertEqual({ok, #{<<"a">> => [1, 2.5, <<"x">>, true, false, null, <<"b">>],
                        <<"k">> => #{}, <<"n">> => 1.0e300}},
                 erlmcp_flow_jsonrpc:decode_json(Bin)),
    %% past a float's range: a parse error, not an infinity
    ?assertEqual({error, parse_error}, erlmcp_flow_jsonrpc:decode_json(<<"[1e400]">>)),
    ?assertMatch({error, {unencodable, _}}, erlmcp_flow_jsonrpc:encode_json({json_number, <<"1e400">>})),
    ?assertEqual({ok, 18446744073709551615}, erlmcp_flow_jsonrpc:decode_json(<<"18446744073709551615">>)),
    ?assertEqual({ok, -9223372036854775808}, erlmcp_flow_jsonrpc:decode_json(<<"-9223372036854775808">>)),
    %% what JSON cannot carry is a readable error, never a crash
    [?assertMatch({error, {unencodable, Why}} when is_binary(Why), erlmcp_flow_jsonrpc:encode_json(T))
     || T <- [self(), make_ref(), {a, b}, <<255>>, 1 bsl 70, [1 | 2], #{{k} => 1}, fun() -> ok end,
              {json_number, <<"12x">>}, lists:foldl(fun(_, A) -> [A] end, [], lists:seq(1, 600))]],
    ?assertEqual({error, parse_error}, erlmcp_flow_jsonrpc:decode_json(<<"{">>)),
    ?assertEqual({error, too_deep}, erlmcp_flow_jsonrpc:decode_json(binary:copy(<<"[">>, 65))),
    ?assertEqual({error, too_large},
                 erlmcp_flow_jsonrpc:decode_json(<<"[1,2]">>, #{max_message_bytes => 3, max_depth => 5,
                                                              max_batch => 1})),
    ?assertEqual({error, {badarg, json}}, erlmcp_flow_jsonrpc:decode_json(not_a_binary)).

%% Ids go back exactly as they came (their text: 1E400 and -0.50 too);
%% messages of every kind encode.
ids_and_messages_test() ->
    Ids = [<<"1">>, <<"-0.50">>, <<"1E400">>, <<"2.5e-3">>, <<"12345678901234567890">>, <<"\"s\"">>, <<"null">>],
    lists:foreach(
      fun(IdText) ->
              Req = <<"{\"jsonrpc\":\"2.0\",\"method\":\"get_data\",\"id\":", IdText/binary, "}">>,
              {reply, Resp} = erlmcp_flow_jsonrpc:responses(erlmcp_flow_jsonrpc:decode(Req), fun call/2),
              ?assertNotEqual(nomatch, binary:match(Resp, <<"\"id\":", IdText/binary>>))
      end, Ids),
    ?assertMatch({single, {request, {json_number, <<"1E400">>}, _, _}},
                 erlmcp_flow_jsonrpc:decode(<<"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":1E400}">>)),
    ?assertMatch({single, {request, 18446744073709551615, _, _}},
                 erlmcp_flow_jsonrpc:decode(<<"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":18446744073709551615}">>)),
    {ok, R} = erlmcp_flow_jsonrpc:encode({request, 7, <<"m">>, #{<<"a">> => 1}}),
    ?assertMatch({single, {request, 7, <<"m">>, #{<<"a">> := 1}}}, erlmcp_flow_jsonrpc:decode(R)),
    {ok, N} = erlmcp_flow_jsonrpc:encode({notification, m, undefined}),
    ?assertEqual({single, {notification, <<"m">>, undefined}}, erlmcp_flow_jsonrpc:decode(N)),
    {ok, E} = erlmcp_flow_jsonrpc:encode({response, <<"x">>, {error, -32000, <<"no">>, #{why => 1}}}),
    ?assertEqual({single, {response, <<"x">>, {error, -32000, <<"no">>, #{<<"why">> => 1}}}},
                 erlmcp_flow_jsonrpc:decode(E)),
    {ok, B} = erlmcp_flow_jsonrpc:encode({batch, [{notification, m, [1]}, {response, 1, {ok, null}}]}),
    ?assertMatch({batch, [{notification, _, [1]}, {response, 1, {ok, null}}]},
                 erlmcp_flow_jsonrpc:decode(B)),
    ?assertMatch({error, {unencodable, _}}, erlmcp_flow_jsonrpc:encode({request, self(), m, undefined})),
    ?assertMatch({error, {unencodable, _}}, erlmcp_flow_jsonrpc:encode({request, 1, m, 5})),
    ?assertMatch({error, {unencodable, _}}, erlmcp_flow_jsonrpc:encode(garbage)),
    ?assertMatch({error, {unencodable, _}}, erlmcp_flow_jsonrpc:encode({batch, [{batch, []}]})),
    ?assertEqual({error, {badarg, message}}, erlmcp_flow_jsonrpc:decode(not_a_binary)),
    ?assertEqual({error, {badarg, limits}}, erlmcp_flow_jsonrpc:decode(<<"{}">>, #{max_message_bytes => 0,
                                                                                 max_depth => 1,
                                                                                 max_batch => 1})).

%% A result JSON cannot carry is answered -32603 with the reason in data.
unencodable_result_test() ->
    Req = <<"{\"jsonrpc\":\"2.0\",\"method\":\"pid\",\"id\":1}">>,
    {reply, Resp} = erlmcp_flow_jsonrpc:responses(erlmcp_flow_jsonrpc:decode(Req),
                                                  fun(_, _) -> {ok, self()} end),
    #{<<"error">> := #{<<"code">> := -32603, <<"data">> := #{<<"reason">> := Why}}, <<"id">> := 1} =
        erlmcp_flow_test_json:decode(Resp),
    ?assertNotEqual(nomatch, binary:match(Why, <<"pid">>)).

%% Large messages decode on a dirty scheduler, the same way.
large_message_test() ->
    Params = lists:duplicate(20000, <<"abcdef">>),
    {ok, Req} = erlmcp_flow_jsonrpc:encode({request, 1, <<"sum">>, Params}),
    ?assert(byte_size(Req) > 65536),
    ?assertMatch({single, {request, 1, <<"sum">>, [<<"abcdef">> | _]}}, erlmcp_flow_jsonrpc:decode(Req)),
    ?assertEqual(-32012, element(3, element(2, erlmcp_flow_jsonrpc:decode(
                                                   Req, #{max_message_bytes => 65536, max_depth => 64,
                                                          max_batch => 100})))).

%% Large terms encode on a dirty scheduler, to the same bytes as on a normal
%% one; a term that has no JSON form is refused the same way by both.
large_encode_test() ->
    Big = #{<<"items">> => lists:seq(1, 50000)},
    ?assert(erlang:external_size(Big) > 65536),
    {ok, Json} = erlmcp_flow_jsonrpc:encode_json(Big),
    %% the normal-scheduler call refuses what is past its bound; the dirty
    %% one encodes it
    ?assertEqual({error, {dirty_only, 16384}}, erlmcp_flow_nif:json_encode(Big)),
    ?assertEqual({ok, Json}, erlmcp_flow_nif:json_encode_dirty(Big)),
    Msg = {response, 7, {ok, Big}},
    {ok, Resp} = erlmcp_flow_jsonrpc:encode(Msg),
    ?assertEqual({error, {dirty_only, 16384}}, erlmcp_flow_nif:jsonrpc_encode(Msg)),
    ?assertEqual({ok, Resp}, erlmcp_flow_nif:jsonrpc_encode_dirty(Msg)),
    ?assertMatch({single, {response, 7, {ok, #{<<"items">> := [1, 2 | _]}}}},
                 erlmcp_flow_jsonrpc:decode(Resp)),
    Bad = #{<<"items">> => lists:seq(1, 50000), <<"pid">> => self()},
    ?assertMatch({error, {unencodable, _}}, erlmcp_flow_jsonrpc:encode_json(Bad)),
    ?assertMatch({error, {unencodable, _}}, erlmcp_flow_nif:json_encode_dirty(Bad)).

%% Every normal-scheduler NIF of the codec and the votes takes at most 16 KiB
%% (of message; units of encoding work: about bytes of JSON) or 64 KiB (of
%% answer to sign) and refuses more by name; the time of the largest it takes
%% is in the bench's worst cases.
%% A term small in external format whose JSON is not goes to the dirty
%% scheduler through the wrappers.
normal_scheduler_bounds_test() ->
    Bound = 16384,
    %% encoding: a binary of Bound - 1 bytes is Bound units (itself, and
    %% one for the term); a list costs one unit a cell and one an element
    Fits = binary:copy(<<"a">>, Bound - 1),
    ?assertEqual({ok, <<$", Fits/binary, $">>}, erlmcp_flow_nif:json_encode(Fits)),
    Past = binary:copy(<<"a">>, Bound),
    ?assertEqual({error, {dirty_only, Bound}}, erlmcp_flow_nif:json_encode(Past)),
    ?assertEqual({ok, <<$", Past/binary, $">>}, erlmcp_flow_jsonrpc:encode_json(Past)),
    %% small integers: 2 bytes each in external format, 2 units each here
    Ints = lists:duplicate(9000, 1),
    ?assert(erlang:external_size(Ints) =< Bound * 2),
    ?assertEqual({error, {dirty_only, Bound}}, erlmcp_flow_nif:json_encode(Ints)),
    ?assertEqual(erlmcp_flow_nif:json_encode_dirty(Ints), erlmcp_flow_jsonrpc:encode_json(Ints)),
    %% a batch of many small messages: each element charged before encoding
    Batch = {batch, [{notification, <<"n">>, []} || _ <- lists:seq(1, 7000)]},
    ?assertEqual({error, {dirty_only, Bound}}, erlmcp_flow_nif:jsonrpc_encode(Batch)),
    ?assertEqual(erlmcp_flow_nif:jsonrpc_encode_dirty(Batch), erlmcp_flow_jsonrpc:encode(Batch)),
    ?assertEqual({error, {unencodable, <<"a batch that is not a list">>}},
                 erlmcp_flow_nif:jsonrpc_encode({batch, [{notification, <<"n">>, []} | x]})),
    ?assertMatch({error, {unencodable, _}}, erlmcp_flow_nif:json_encode([1, 2 | 3])),
    %% decoding: a message of the bound, then one byte more
    Msg = fun(N) ->
                  Head = <<"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":[\"">>,
                  Tail = <<"\"]}">>,
                  Pad = binary:copy(<<"x">>, N - byte_size(Head) - byte_size(Tail)),
                  <<Head/binary, Pad/binary, Tail/binary>>
          end,
    Limits = [1 bsl 20, 64, 100],
    Decode = Bound,
    ?assertMatch({single, {notification, <<"m">>, [_]}},
                 apply(erlmcp_flow_nif, jsonrpc_decode, [Msg(Decode) | Limits])),
    ?assertEqual({error, {dirty_only, Decode}},
                 apply(erlmcp_flow_nif, jsonrpc_decode, [Msg(Decode + 1) | Limits])),
    ?assertMatch({single, {notification, <<"m">>, [_]}},
                 apply(erlmcp_flow_nif, jsonrpc_decode_dirty, [Msg(Decode + 1) | Limits])),
    ?assertEqual(apply(erlmcp_flow_nif, jsonrpc_decode_dirty, [Msg(4 * Bound) | Limits]),
                 erlmcp_flow_jsonrpc:decode(Msg(4 * Bound), #{max_message_bytes => 1 bsl 20,
                                                          max_depth => 64, max_batch => 100})).

%% The id of a message past the limit, read from its first bytes: a
%% top-level "id" only (not one nested in params), a number, a string or
%% null; anything else, or bytes that end before it, null.
head_id_test() ->
    H = fun erlmcp_flow_jsonrpc:head_id/1,
    ?assertEqual(42, H(<<"{\"jsonrpc\":\"2.0\",\"id\":42,\"method\":\"x\",\"params\":{\"a\":\"">>)),
    ?assertEqual(<<"a\"b">>, H(<<"{\"params\":{\"id\":5,\"x\":[1,{\"id\":3}],\"s\":\"}\"},\"id\":\"a\\\"b\",">>)),
    ?assertEqual(-7, H(<<" {\r\n\t\"id\" : -7 , ">>)),
    ?assertEqual(9, H(<<"{\"a\":true,\"b\":null,\"c\":1.5e3,\"id\":9}">>)),
    ?assertEqual(null, H(<<"{\"id\":null,">>)),
    ?assertEqual(null, H(<<"{\"method\":\"tools/call\",\"params\":{\"arguments\":{\"data\":\"xxxx">>)),
    ?assertEqual(null, H(<<"[{\"id\":1">>)),
    ?assertEqual(null, H(<<"{\"id\":1.5,">>)),
    ?assertEqual(null, H(<<"{\"id\":12">>)),
    ?assertEqual(null, H(<<"{\"id\":\"unterminated">>)),
    ?assertEqual(null, H(<<"{\"id\" 1}">>)),
    ?assertEqual(null, H(<<"{\"a\":1 \"id\":2}">>)),
    ?assertEqual(null, H(<<"{\"a\":\"open">>)),
    ?assertEqual(null, H(<<"{\"a\":[1,2">>)),
    ?assertEqual(null, H(<<"{\"a\":tru">>)),
    ?assertEqual(null, H(<<"{3:1}">>)),
    ?assertEqual(null, H(<<>>)),
    ?assertMatch(#{<<"id">> := 42, <<"error">> := #{<<"code">> := -32012}},
                 erlmcp_flow_test_json:decode(
                   erlmcp_flow_jsonrpc:too_large(10, 100, <<"{\"id\":42,\"method\":">>))).
