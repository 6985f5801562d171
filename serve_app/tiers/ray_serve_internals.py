"""The one place the product reads Ray Serve's private client (Ray 2.60.0).

- `serve_details()`: the Serve controller's raw status dict
  (`ray.serve.context._get_global_client().get_serve_details()`). The public `serve.status()`
  builds pydantic models from that same dict, and on the way cloudpickles every deployment's
  request router class: 53 ms of CPU a call against 0.9 ms for the read alone (six
  deployments, measured 2026-12-01). The tier watch reads it every few seconds in every
  ingress replica, where those 53 ms held the GIL beside live requests (21% of an ingress
  replica's CPU at 10 requests/s). Replace with a public read of replica states once Ray Serve
  has one that does not build the models.
"""

from __future__ import annotations

from typing import Any


def serve_details() -> dict[str, Any] | None:
    """The controller's status dict, or None when this Ray has no such private client."""
    try:
        from ray.serve.context import _get_global_client
    except ImportError:
        return None
    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else client.get_serve_details()
