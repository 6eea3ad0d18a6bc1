"""Inside a participant's process: the Participant, pool workers and their cohorts, private state, secure aggregation's client side, the system simulator."""
