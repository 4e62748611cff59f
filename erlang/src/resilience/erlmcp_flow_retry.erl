%% @private
%% @doc Retry policy: which failures are worth another attempt, and how long
%% to wait before it (exponential backoff with full jitter).
-module(erlmcp_flow_retry).

%% API
-export([retryable/1]).
-export([backoff/3]).
-export([backoff/4]).

%% @doc Whether a failed attempt may be tried again: the agent timed out,
%% died, or answered an error (or garbage). A refused routing is not an
%% attempt, and a bad argument stays bad.
-spec retryable(term()) -> boolean().
retryable(execution_timeout) -> true;
retryable({agent_down, _}) -> true;
retryable({agent_error, _}) -> true;
retryable({bad_agent_reply, _}) -> true;
retryable(_) -> false.

%% @equiv backoff(Attempt, Base, Max, fun rand:uniform/1)
-spec backoff(pos_integer(), non_neg_integer(), non_neg_integer()) -> non_neg_integer().
backoff(Attempt, Base, Max) ->
    backoff(Attempt, Base, Max, fun rand:uniform/1).

%% @doc Milliseconds to wait before retry number `Attempt' (1 for the first
%% retry): uniform in [0, min(Max, Base * 2^(Attempt-1))], "full jitter", so
%% that callers failing together do not retry together. `Uniform(N)' draws in
%% 1..N (the seam tests fix).
-spec backoff(pos_integer(), non_neg_integer(), non_neg_integer(),
              fun((pos_integer()) -> pos_integer())) -> non_neg_integer().
backoff(Attempt, Base, Max, Uniform) when is_integer(Attempt), Attempt >= 1 ->
    Cap = min(Max, Base bsl min(Attempt - 1, 32)),
    Uniform(Cap + 1) - 1.
