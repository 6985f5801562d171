"""The LLM tiers: Ray Serve LLM deployments over vLLM and the client that calls them."""
