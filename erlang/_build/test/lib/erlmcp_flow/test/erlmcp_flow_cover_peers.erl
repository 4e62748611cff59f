%% Cover on the peer nodes a suite starts.
%%
%% Under `make cover' (rebar3 ct --cover) this node holds cover-compiled
%% modules; a peer node would load the plain ones from the code path, so the
%% code that runs only there (cluster membership, mirroring, the failure
%% detector, vote services) would count as never run. attach/2, called before
%% the peer starts erlmcp_flow, makes the peer a cover node: it loads the
%% cover-compiled modules, and its counts come back to this node when
%% detach/1 is called before the peer stops. Without cover both do nothing,
%% so the suites behave the same either way.
%%
%% This node becomes distributed for it, hidden: it does not appear in the
%% peers' nodes(), so their cluster (pg, the failure detector) never sees it.
-module(erlmcp_flow_cover_peers).

-export([attach/2, detach/1, stop/0]).

-spec attach(node(), atom()) -> ok.
attach(Node, Cookie) ->
    case under_cover() of
        false ->
            ok;
        true ->
            ok = ensure_distributed(),
            true = erlang:set_cookie(Node, Cookie),
            {ok, [Node]} = cover:start([Node]),
            ok
    end.

%% Fetches the peers' counts (the peers keep running the cover-compiled
%% code until they stop); peers that were never attached or are gone
%% already are left out.
-spec detach([node()]) -> ok.
detach(Nodes) ->
    case under_cover() of
        false ->
            ok;
        true ->
            Attached = [N || N <- Nodes, lists:member(N, erlang:nodes(connected))],
            _ = [cover:flush([N]) || N <- Attached],
            ok
    end.

under_cover() ->
    is_pid(whereis(cover_server)) andalso cover:modules() =/= [].

ensure_distributed() ->
    case node() of
        nonode@nohost ->
            Name = list_to_atom(peer:random_name("cover")),
            {ok, _} = net_kernel:start(Name, #{name_domain => shortnames, hidden => true}),
            persistent_term:put(?MODULE, distributed),
            ok;
        _ ->
            ok
    end.

%% Ends the distribution attach/2 started (other suites start their own).
-spec stop() -> ok.
stop() ->
    case persistent_term:get(?MODULE, undefined) of
        distributed ->
            _ = persistent_term:erase(?MODULE),
            _ = net_kernel:stop(),
            ok;
        undefined ->
            ok
    end.
