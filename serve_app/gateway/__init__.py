"""The OpenAI-compatible HTTP ingress and the request path behind it."""
