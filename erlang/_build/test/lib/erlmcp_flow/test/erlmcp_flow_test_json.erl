%% A small JSON reader for the shared test vectors under tests/vectors
%% (OTP 25 has no json module). Objects become maps with binary keys,
%% arrays lists, numbers integers or floats, true/false/null atoms.
-module(erlmcp_flow_test_json).

-export([decode/1, vectors/1, vectors/2]).
-export([encode/1]).

%% The `cases' of tests/vectors/Name, found from this module's location.
vectors(Name) ->
    vectors(Name, <<"cases">>).

%% One part of a vector file: <<"cases">>, or <<"incoming">> (the W3C
%% harness's requests).
vectors(Name, Part) ->
    %% the repository root is above this module's beam (wherever rebar3
    %% put it) or the working directory
    Dir = filename:dirname(filename:absname(code:which(?MODULE))),
    Ups = [lists:duplicate(N, "..") || N <- lists:seq(0, 6)],
    Candidates = [filename:join(["tests", "vectors", Name])
                  | [filename:join([Dir] ++ Up ++ ["tests", "vectors", Name]) || Up <- Ups]],
    [Path | _] = [P || P <- Candidates, filelib:is_regular(P)],
    {ok, Bin} = file:read_file(Path),
    #{Part := Cases} = decode(Bin),
    Cases.

decode(Bin) ->
    {Value, Rest} = value(skip(Bin)),
    <<>> = skip(Rest),
    Value.

value(<<${, R/binary>>) -> object(skip(R), #{});
value(<<$[, R/binary>>) -> array(skip(R), []);
value(<<$", R/binary>>) -> string(R, <<>>);
value(<<"true", R/binary>>) -> {true, R};
value(<<"false", R/binary>>) -> {false, R};
value(<<"null", R/binary>>) -> {null, R};
value(Bin) -> number(Bin).

object(<<$}, R/binary>>, Acc) -> {Acc, R};
object(Bin, Acc) ->
    {Key, R1} = value(Bin),
    <<$:, R2/binary>> = skip(R1),
    {Val, R3} = value(skip(R2)),
    case skip(R3) of
        <<$,, R4/binary>> -> object(skip(R4), Acc#{Key => Val});
        <<$}, R4/binary>> -> {Acc#{Key => Val}, R4}
    end.

array(<<$], R/binary>>, Acc) -> {lists:reverse(Acc), R};
array(Bin, Acc) ->
    {Val, R1} = value(Bin),
    case skip(R1) of
        <<$,, R2/binary>> -> array(skip(R2), [Val | Acc]);
        <<$], R2/binary>> -> {lists:reverse([Val | Acc]), R2}
    end.

string(<<$", R/binary>>, Acc) -> {Acc, R};
string(<<"\\u", Hex:4/binary, R/binary>>, Acc) ->
    string(R, <<Acc/binary, (binary_to_integer(Hex, 16))/utf8>>);
string(<<$\\, C, R/binary>>, Acc) -> string(R, <<Acc/binary, (unescape(C))>>);
string(<<C, R/binary>>, Acc) -> string(R, <<Acc/binary, C>>).

unescape($n) -> $\n;
unescape($t) -> $\t;
unescape(C) -> C.

number(Bin) ->
    {Text, Rest} = lists:splitwith(fun(C) -> lists:member(C, "+-0123456789.eE") end,
                                   binary_to_list(Bin)),
    Value = case string:to_integer(Text) of
                {I, []} -> I;
                _ -> float_of(Text)
            end,
    {Value, list_to_binary(Rest)}.

float_of(Text) ->
    %% "1e-05" and "2.0E+3" forms: make sure there is a fraction for list_to_float
    case string:split(string:lowercase(Text), "e") of
        [M, E] -> list_to_float(mantissa(M) ++ "e" ++ E);
        [M] -> list_to_float(mantissa(M))
    end.

mantissa(M) ->
    case lists:member($., M) of
        true -> M;
        false -> M ++ ".0"
    end.

skip(<<C, R/binary>>) when C =:= $\s; C =:= $\n; C =:= $\r; C =:= $\t -> skip(R);
skip(Bin) -> Bin.

%% JSON text of a term decode/1 gives back: maps (binary or atom keys),
%% lists, binaries, numbers, true/false/null.
encode(M) when is_map(M) ->
    [${, lists:join($,, [[encode(key(K)), $:, encode(V)] || {K, V} <- maps:to_list(M)]), $}];
encode(L) when is_list(L) ->
    [$[, lists:join($,, [encode(V) || V <- L]), $]];
encode(B) when is_binary(B) ->
    [$", [escape(C) || <<C>> <= B], $"];
encode(true) -> <<"true">>;
encode(false) -> <<"false">>;
encode(null) -> <<"null">>;
encode(I) when is_integer(I) -> integer_to_binary(I);
encode(F) when is_float(F) -> float_to_binary(F, [short]).

key(K) when is_atom(K) -> atom_to_binary(K);
key(K) -> K.

escape($") -> <<"\\\"">>;
escape($\\) -> <<"\\\\">>;
escape(C) when C < 16#20 -> io_lib:format("\\u~4.16.0b", [C]);
escape(C) -> C.
