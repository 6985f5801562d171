"""What a request is on the wire: OpenAI bodies and SSE, errors, the caller, cascade headers."""
