%% A strict reader of the Prometheus text exposition format (0.0.4) for the
%% tests: every line must be a HELP, a TYPE or a sample of a declared family,
%% with well-formed names, labels and values.
-module(erlmcp_flow_test_prometheus).

-export([parse/1]).

-define(NAME, "[a-zA-Z_:][a-zA-Z0-9_:]*").

%% {ok, #{Family => Type}, [{Name, #{Label => Value}, Number}]}, or an error
%% naming the first bad line.
parse(Body) when is_binary(Body) ->
    case binary:last(Body) of
        $\n -> ok;
        _ -> error({no_final_newline, Body})
    end,
    Lines = binary:split(Body, <<"\n">>, [global, trim]),
    {Types, Samples} = lists:foldl(fun line/2, {#{}, []}, Lines),
    {ok, Types, lists:reverse(Samples)}.

line(<<"# HELP ", Rest/binary>> = L, {Types, Samples}) ->
    case re:run(Rest, "^(" ?NAME ") .+$", [{capture, all_but_first, binary}]) of
        {match, [_]} -> {Types, Samples};
        nomatch -> error({bad_help, L})
    end;
line(<<"# TYPE ", Rest/binary>> = L, {Types, Samples}) ->
    case re:run(Rest, "^(" ?NAME ") (counter|gauge|summary|histogram|untyped)$",
                [{capture, all_but_first, binary}]) of
        {match, [Name, Type]} ->
            maps:is_key(Name, Types) andalso error({type_twice, L}),
            {Types#{Name => binary_to_atom(Type)}, Samples};
        nomatch ->
            error({bad_type, L})
    end;
line(<<"#", _/binary>> = L, _) ->
    error({bad_comment, L});
line(L, {Types, Samples}) ->
    case re:run(L, "^(" ?NAME ")(?:\\{(.*)\\})? ([^ ]+)$", [{capture, all_but_first, binary}]) of
        {match, [Name, LabelText, ValueText]} ->
            family(Name, Types) =:= undefined andalso error({undeclared_family, L}),
            {Types, [{Name, labels(LabelText, L), number(ValueText, L)} | Samples]};
        nomatch ->
            error({bad_sample, L})
    end.

%% The family of a sample: its name, or the name without a summary's or a
%% histogram's suffix.
family(Name, Types) ->
    Candidates = [Name | [binary:part(Name, 0, byte_size(Name) - byte_size(S))
                          || S <- [<<"_sum">>, <<"_count">>, <<"_bucket">>],
                             byte_size(Name) > byte_size(S),
                             binary:longest_common_suffix([Name, S]) =:= byte_size(S)]],
    case [C || C <- Candidates, maps:is_key(C, Types)] of
        [F | _] -> F;
        [] -> undefined
    end.

labels(<<>>, _) -> #{};
labels(Text, L) -> labels(Text, L, #{}).

labels(Text, L, Acc) ->
    case re:run(Text, "^([a-zA-Z_][a-zA-Z0-9_]*)=\"", [{capture, [1], binary}]) of
        {match, [Key]} ->
            <<_:(byte_size(Key) + 2)/binary, Rest/binary>> = Text,
            {Value, After} = label_value(Rest, <<>>, L),
            maps:is_key(Key, Acc) andalso error({label_twice, L}),
            Acc1 = Acc#{Key => Value},
            case After of
                <<>> -> Acc1;
                <<",", More/binary>> -> labels(More, L, Acc1);
                _ -> error({bad_labels, L})
            end;
        nomatch ->
            error({bad_labels, L})
    end.

label_value(<<"\"", Rest/binary>>, Acc, _) -> {Acc, Rest};
label_value(<<"\\\\", Rest/binary>>, Acc, L) -> label_value(Rest, <<Acc/binary, "\\">>, L);
label_value(<<"\\\"", Rest/binary>>, Acc, L) -> label_value(Rest, <<Acc/binary, "\"">>, L);
label_value(<<"\\n", Rest/binary>>, Acc, L) -> label_value(Rest, <<Acc/binary, "\n">>, L);
label_value(<<"\\", _/binary>>, _, L) -> error({bad_escape, L});
label_value(<<C, Rest/binary>>, Acc, L) -> label_value(Rest, <<Acc/binary, C>>, L);
label_value(<<>>, _, L) -> error({unterminated_label, L}).

number(<<"+Inf">>, _) -> infinity;
number(<<"-Inf">>, _) -> neg_infinity;
number(<<"NaN">>, _) -> nan;
number(Text, L) ->
    try binary_to_integer(Text)
    catch error:badarg ->
            try binary_to_float(Text)
            catch error:badarg -> error({bad_value, L})
            end
    end.
