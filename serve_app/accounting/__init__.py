"""Cost in dollars per request and per lever, and the cascade's Prometheus metrics."""
