"""The autoscaling benchmark's offline parts: its profile and its transition accounting.

The benchmark itself (`make autoscaling-benchmark`) starts a stack of its own and takes minutes,
so CI checks what can go wrong without one: the profile is local.yaml with only the small
tier's scaling changed, its two replicas can be scheduled on the box, and the figures count the
right requests. Building the graph needs a Ray runtime context (as tests/test_production_config
explains): a private one-CPU Ray, no Serve, no engine.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.autoscaling import (
    SMALL_TIER_AUTOSCALING,
    ReplicaSample,
    Timeline,
    autoscaling_profile,
    autoscaling_report,
    passed,
    small_tier_request,
    table,
    write_profile,
)
from benchmarks.loadgen import Outcome
from serve_app.config import CascadeConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL = REPO_ROOT / "configs" / "local.yaml"
PRODUCTION = REPO_ROOT / "configs" / "production.yaml"
BOX_CPUS = 2.0  # the local profile's machine: 2 cores, Ray's default of one CPU per core


def _serve_config(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _args(serve_config: dict[str, Any]) -> dict[str, Any]:
    (app,) = serve_config["applications"]
    return app["args"]


@pytest.fixture(scope="module")
def local() -> dict[str, Any]:
    return _serve_config(LOCAL)


@pytest.fixture(scope="module")
def profile(local) -> dict[str, Any]:
    return autoscaling_profile(local)


def test_profile_is_a_valid_serve_config_for_the_builder(profile, tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(profile)
    CascadeConfig.model_validate(_args(profile))
    # The file `serve run` gets is the same profile.
    written = yaml.safe_load(write_profile(tmp_path / "profile.yaml").read_text())
    assert written == profile


def test_profile_changes_nothing_but_the_small_tiers_scaling(local, profile) -> None:
    local_before = copy.deepcopy(local)
    small = _args(profile)["tiers"]["small"]
    assert small["deployment_config"]["autoscaling_config"] == SMALL_TIER_AUTOSCALING
    assert "num_replicas" not in small["deployment_config"]  # Serve refuses both
    # Put the small tier's scaling back: what is left is local.yaml, large tier included
    # (the YAML anchors make both tiers share one deployment_config mapping).
    restored = copy.deepcopy(profile)
    local_small = _args(local)["tiers"]["small"]
    for key in ("deployment_config", "placement_group_config"):
        _args(restored)["tiers"]["small"][key] = local_small[key]
    assert restored == local
    assert local == local_before  # building the profile left its input alone


def test_profile_scales_on_productions_fields_with_shorter_delays() -> None:
    production = _args(_serve_config(PRODUCTION))["tiers"]["small"]["deployment_config"]
    production_scaling = production["autoscaling_config"]
    assert set(SMALL_TIER_AUTOSCALING) == set(production_scaling)
    assert (SMALL_TIER_AUTOSCALING["min_replicas"], SMALL_TIER_AUTOSCALING["max_replicas"]) == (
        1,
        2,
    )
    for delay in ("upscale_delay_s", "downscale_delay_s"):
        assert SMALL_TIER_AUTOSCALING[delay] < production_scaling[delay]


@pytest.fixture(scope="module")
def offline_ray():
    import ray

    # address="local": never attach to a cluster already running on this machine.
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _reserved_cpus_at_most_replicas(serve_config: dict[str, Any]) -> dict[str, float]:
    """Logical CPUs each deployment `serve run` would create reserves at its most replicas."""
    from ray.serve._private.build_app import build_app as flatten
    from ray.serve.deployment import deployment_to_schema

    from serve_app.builder import build_app

    reserved = {}
    for deployment in flatten(build_app(_args(serve_config)), name="cascade").deployments:
        schema = deployment_to_schema(deployment).model_dump(exclude_unset=True)
        scaling = schema.get("autoscaling_config")
        replicas = scaling["max_replicas"] if scaling else schema["num_replicas"]
        # A replica in a placement group runs inside its first bundle.
        bundles = schema.get("placement_group_bundles") or [schema["ray_actor_options"]]
        per_replica = sum(bundle.get("CPU", bundle.get("num_cpus", 0)) for bundle in bundles)
        reserved[deployment.name] = replicas * per_replica
    return reserved


def test_second_small_replica_can_be_scheduled_on_the_box(offline_ray, local, profile) -> None:
    """A second replica that reserved as much as the first would never leave PENDING: local.yaml
    already reserves 1.8 of the 2 CPUs. Two small replicas reserve what one did."""
    local_cpus = _reserved_cpus_at_most_replicas(local)
    profile_cpus = _reserved_cpus_at_most_replicas(profile)
    assert sum(local_cpus.values()) + local_cpus["llm-small"] > BOX_CPUS
    assert profile_cpus == pytest.approx(local_cpus)
    assert sum(profile_cpus.values()) <= BOX_CPUS


def test_load_reaches_the_small_tiers_engine() -> None:
    first, second = small_tier_request(0, 32), small_tier_request(1, 32)
    assert first["model"] == "cascade-small" and first["cache"] is False
    assert first["max_tokens"] == 32
    assert first["messages"] != second["messages"]


# ---- the accounting, on a synthetic run ------------------------------------------------------


def _sample(t_s: float, running: int, total: int) -> ReplicaSample:
    states = {"RUNNING": running}
    if total > running:
        states["STARTING" if t_s < 50 else "STOPPING"] = total - running
    return ReplicaSample(t_s, running, total, states, "HEALTHY", 0, 0)


def _timeline() -> Timeline:
    """Polled every second: load at 10 s; Serve starts a 2nd replica between 19 and 20 s, it
    runs at 40 s; load drops at 60 s; the replica leaves RUNNING at 85 s and is gone at 87 s."""
    samples = []
    for t_s in range(0, 100):
        if 20 <= t_s < 40:
            samples.append(_sample(t_s, 1, 2))
        elif 40 <= t_s < 85:
            samples.append(_sample(t_s, 2, 2))
        elif 85 <= t_s < 87:
            samples.append(_sample(t_s, 1, 2))
        else:
            samples.append(_sample(t_s, 1, 1))
    return Timeline(samples, load_started_s=10.0, idle_started_s=60.0, stopped_s=99.0)


def _outcome(started_s: float, latency_s: float, kind: str = "ok") -> Outcome:
    status = {"ok": 200, "http_503": 503}.get(kind)
    return Outcome(started_s, latency_s, status, kind, {})


def test_transitions_count_the_requests_in_flight_while_serve_scaled() -> None:
    outcomes = [
        _outcome(10, 8),  # ends 18: before Serve started the replica (after the 19 s poll)
        _outcome(15, 5),  # ends 20: in flight when it started
        _outcome(30, 2, "http_503"),
        _outcome(39, 3),  # ends 42: past the poll that saw it RUNNING, started before
        _outcome(50, 5),  # between the transitions
        _outcome(83, 2, "lost"),  # ends 85: in flight when the replica left RUNNING
        _outcome(86, 1),
        _outcome(88, 1),  # after the replica was gone
    ]
    report = autoscaling_report(_timeline(), outcomes)
    assert report["scale_up_s"] == 30.0
    assert report["scale_up_decided_s"] == 10.0
    assert report["scale_down_s"] == 25.0
    assert report["scale_down_removed_s"] == 27.0
    assert report["during_scale_up"] == {
        "from_s": 19.0,
        "to_s": 40.0,
        "requests": 3,
        "answered": 2,
        "failed": 1,
        "lost": 0,
    }
    assert report["during_scale_down"] == {
        "from_s": 84.0,
        "to_s": 87.0,
        "requests": 2,
        "answered": 1,
        "failed": 0,
        "lost": 1,
    }
    assert report["whole_run"]["answered"] == 6
    assert report["whole_run"]["lost"] == 1
    assert not passed(report)  # a lost request fails the run
    assert "scale up (load start -> 2 RUNNING)" in table(report)


def test_a_run_that_never_scaled_up_fails_and_says_never() -> None:
    samples = [_sample(t_s, 1, 1) for t_s in range(0, 30)]
    report = autoscaling_report(Timeline(samples, load_started_s=5.0), [_outcome(5, 1)])
    assert report["scale_up_s"] is None and report["scale_down_s"] is None
    assert report["during_scale_up"] is None and report["during_scale_down"] is None
    assert not passed(report)
    assert "never" in table(report)


def test_a_clean_run_passes() -> None:
    report = autoscaling_report(_timeline(), [_outcome(15, 5), _outcome(83, 2)])
    assert report["whole_run"]["lost"] == 0
    assert passed(report)
