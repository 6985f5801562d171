"""Benchmarks that print figures for the issues' closing notes; tests only smoke-run them.

Several attach to the local stack's Ray cluster by its explicit address (never "the newest
cluster on the machine"). A cluster started while ~/.ray/auth_token exists requires that token,
and Ray honours it for an explicit address only if the auth mode is set before Ray first reads
its config in the process, which the first `import ray` of any benchmark module may do. So the
mode is set here, before any benchmark module is imported.
"""

from benchmarks.faults import use_ray_token_auth_if_configured

use_ray_token_auth_if_configured()
