"""The quality gate on small-tier answers, escalation to the large tier, circuit breakers."""
