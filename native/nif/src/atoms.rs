rustler::atoms! {
    ok,
    error,
    badarg,
    // reasons
    no_agents_available,
    already_registered,
    not_found,
    already_settled,
    system_clock,
    // values
    agent,
    swarm,
    system,
    clock,
    manual,
    round_robin,
    // outcomes
    timeout,
    down,
    abandoned,
    // stats keys
    agents,
    in_flight,
    dispatched,
    succeeded,
    failed,
    timed_out,
    ewma_latency_us,
}
