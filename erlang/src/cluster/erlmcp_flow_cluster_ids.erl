%% @private
%% @doc Unique agent ids in summary mode, where no node holds every agent:
%% the id space is partitioned over the members (rendezvous hashing,
%% `erlmcp_flow_cluster_summary:owner/1'), and the owner of an id keeps
%% which node holds it.
%%
%% A registration claims its id from the owner first (`claim/1', in the
%% registering process): an id a reachable node holds is refused
%% `{error, already_registered}', as a mirrored one is. An owner that cannot
%% be reached accepts nothing and refuses nothing: the registration goes
%% on, and the rule of two nodes that were apart settles it when they meet.
%% Whenever the members change, every node hands each owner the full list
%% of its own ids that owner now owns (`settle/3' on the owner): the
%% directory is rebuilt from the holders, and two holders of one id (nodes
%% that registered it while apart) are found there: the node with the
%% smaller name keeps it, the other is told to unregister its own, as in
%% mirror mode. A removed agent's id is given back (`release/1').
-module(erlmcp_flow_cluster_ids).

-export([new/0]).
-export([claim/1]).
-export([release/1]).
-export([take/3]).
-export([settle/3]).
-export([released/2]).
-export([prune/1]).
-export([by_owner/2]).
-export([size/0]).
-export([memory/0]).

-define(TAB, erlmcp_flow_cluster_ids).
%% the cluster process's registered name on every node
-define(CLUSTER, erlmcp_flow_cluster).
-define(CLAIM_TIMEOUT_MS, 5000).

%% @doc Creates the directory's table, owned by the calling process (the
%% cluster's).
-spec new() -> ok.
new() ->
    _ = ets:new(?TAB, [named_table, protected, set]),
    ok.

%% @doc Claims `Id' for this node from its owner: `ok', or
%% `{error, already_registered}' when a reachable node holds it.
-spec claim(binary()) -> ok | {error, already_registered}.
claim(Id) ->
    case erlmcp_flow_cluster_summary:owner(Id) of
        undefined ->
            ok;
        Owner ->
            case erlmcp_flow_call:call({?CLUSTER, Owner}, {claim, Id, node()}, ?CLAIM_TIMEOUT_MS) of
                {error, already_registered} = E -> E;
                _ -> ok
            end
    end.

%% @doc Gives `Id' back to its owner (this node's agent is gone).
-spec release(binary()) -> ok.
release(Id) ->
    case erlmcp_flow_cluster_summary:owner(Id) of
        undefined -> ok;
        Owner -> send(Owner, {flow_cluster, releases, node(), [Id]})
    end.

%% @doc On the owner: `Node' takes `Id' unless another of `Members' holds
%% it (`{conflict, Holder}').
-spec take(binary(), node(), [node()]) -> ok | {conflict, node()}.
take(Id, Node, Members) ->
    case ets:lookup(?TAB, Id) of
        [{Id, Node}] ->
            ok;
        [{Id, Held}] ->
            case lists:member(Held, Members) of
                true -> {conflict, Held};
                false -> insert(Id, Node)
            end;
        [] ->
            insert(Id, Node)
    end.

insert(Id, Node) ->
    true = ets:insert(?TAB, {Id, Node}),
    ok.

%% @doc On the owner: `Ids' is every id `Node' holds that this node owns.
%% Ids it held and no longer lists are dropped; an id another member holds
%% goes to the smaller node name. Returns the losers to tell:
%% `[{Loser, Id, Winner}]'.
-spec settle(node(), [binary()], [node()]) -> [{node(), binary(), node()}].
settle(Node, Ids, Members) ->
    Listed = maps:from_keys(Ids, true),
    Stale = ets:select(?TAB, [{{'$1', Node}, [], ['$1']}]),
    [true = ets:delete(?TAB, Id) || Id <- Stale, not is_map_key(Id, Listed)],
    lists:foldl(fun(Id, Losers) ->
                        case take(Id, Node, Members) of
                            ok ->
                                Losers;
                            {conflict, Held} when Node < Held ->
                                ok = insert(Id, Node),
                                [{Held, Id, Node} | Losers];
                            {conflict, Held} ->
                                [{Node, Id, Held} | Losers]
                        end
                end, [], Ids).

%% @doc On the owner: `Node' gave `Ids' back (those it still holds here).
-spec released(node(), [binary()]) -> ok.
released(Node, Ids) ->
    lists:foreach(fun(Id) -> ets:delete_object(?TAB, {Id, Node}) end, Ids).

%% @doc Drops the ids held by nodes that are not `Members', and those
%% another member owns now (their holders hand them to it).
-spec prune([node()]) -> ok.
prune(Members) ->
    Me = node(),
    ets:foldl(fun({Id, Held}, ok) ->
                      case lists:member(Held, Members) andalso
                          erlmcp_flow_cluster_summary:owner(Id, Members) =:= Me of
                          true -> ok;
                          false -> true = ets:delete(?TAB, Id), ok
                      end
              end, ok, ?TAB).

%% @doc `Ids' grouped by their owner among `Members', every member present
%% (those owning none with `[]').
-spec by_owner([binary()], [node()]) -> #{node() => [binary()]}.
by_owner(Ids, Members) ->
    lists:foldl(fun(Id, M) ->
                        maps:update_with(erlmcp_flow_cluster_summary:owner(Id, Members),
                                         fun(L) -> [Id | L] end, M)
                end, maps:from_keys(Members, []), Ids).

%% @doc The ids this node keeps for the cluster.
-spec size() -> non_neg_integer().
size() ->
    case ets:info(?TAB, size) of
        undefined -> 0;
        N -> N
    end.

%% @doc Bytes of the directory's table.
-spec memory() -> non_neg_integer().
memory() ->
    case ets:info(?TAB, memory) of
        undefined -> 0;
        Words -> Words * erlang:system_info(wordsize)
    end.

send(Node, Msg) ->
    _ = erlang:send({?CLUSTER, Node}, Msg, [noconnect]),
    ok.
