"""The production profile, checked without a GPU: the Serve config builds the full graph offline,
the cluster files match it, and local differs from production only by config.

Building the graph needs a Ray connection but no GPU and no download: Ray Serve LLM's
`LLMServer.get_deployment_options` reads the driver's runtime_env from the Ray runtime context
(and would otherwise auto-start a default Ray). LLMConfig never reads the model's HF config
while building: that happens in the replica. So the tests start a private one-CPU Ray without a
dashboard for this module; no engine, replica or Serve instance is started.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from serve_app.config import CascadeConfig, TierConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = REPO_ROOT / "configs" / "production.yaml"
LOCAL = REPO_ROOT / "configs" / "local.yaml"
CLUSTER = REPO_ROOT / "cluster.yaml"
RAYSERVICE = REPO_ROOT / "deploy" / "rayservice.yaml"
RAYSERVICE_MIG = REPO_ROOT / "deploy" / "rayservice-mig.yaml"
# The shipped router scores in the ingress (serve_app.routing.placement), and the cache looks
# up there too (serve_app.cache.placement): neither has a deployment.
DEPLOYMENTS = {"ingress", "llm-small", "llm-large"}
SPECULATIVE_BLOCK = re.compile(
    r"^(?P<indent> *)# speculative_config:\n(?:(?P=indent)#   .*\n)+", re.MULTILINE
)


def _serve_config(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    if document.get("kind") == "RayService":
        return yaml.safe_load(document["spec"]["serveConfigV2"])
    return document


def _args(path: Path) -> dict[str, Any]:
    (app,) = _serve_config(path)["applications"]
    return app["args"]


@pytest.fixture(scope="module")
def offline_ray():
    import ray

    # address="local": never attach to a cluster already running on this machine.
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _build(args: dict[str, Any]) -> dict[str, Any]:
    """The deployments `serve build` / `serve deploy` would create from the builder's graph."""
    from ray.serve._private.build_app import build_app as flatten

    from serve_app.builder import build_app

    built = flatten(build_app(args), name="cascade")
    assert built.ingress_deployment_name == "ingress"
    return {deployment.name: deployment for deployment in built.deployments}


@pytest.fixture(scope="module")
def production(offline_ray) -> dict[str, Any]:
    return _build(_args(PRODUCTION))


@pytest.fixture(scope="module")
def local(offline_ray) -> dict[str, Any]:
    return _build(_args(LOCAL))


def _schema(deployment) -> dict[str, Any]:
    from ray.serve.deployment import deployment_to_schema

    return deployment_to_schema(deployment).model_dump(exclude_unset=True)


def _llm_config(deployment):
    return deployment.init_kwargs["llm_config"]


# ---- the Serve config ----------------------------------------------------------------------


def test_production_is_a_valid_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(_serve_config(PRODUCTION))
    (app,) = schema.applications
    assert app.import_path == "serve_app.builder:build_app"
    CascadeConfig.model_validate(app.args)


def test_production_cache_is_a_shared_qdrant_server_with_a_key_from_the_environment() -> None:
    cache = CascadeConfig.model_validate(_args(PRODUCTION)).cache
    assert cache.store == "qdrant"
    assert cache.qdrant_url is not None and cache.qdrant_url.startswith(("http://", "https://"))
    assert cache.qdrant_api_key_env == "QDRANT_API_KEY"


def test_production_tiers_price_every_gpu_of_a_replica() -> None:
    config = CascadeConfig.model_validate(_args(PRODUCTION))
    for tier in config.tiers.values():
        assert tier.cost.gpus_per_replica == tier.engine_kwargs.get("tensor_parallel_size", 1)
    assert config.tiers["large"].cost.gpu_usd_per_hour > config.tiers["small"].cost.gpu_usd_per_hour


# ---- the graph built offline -----------------------------------------------------------------


def test_production_builds_the_full_graph_offline(production) -> None:
    assert set(production) == DEPLOYMENTS
    sources = {
        name: _llm_config(production[f"llm-{name}"]).model_loading_config.model_source
        for name in ("small", "large")
    }
    assert sources == {
        "small": "meta-llama/Llama-3.1-8B-Instruct",
        "large": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    }


def test_tier_placement_groups_hold_one_gpu_per_tensor_parallel_rank(production) -> None:
    expected = {"llm-small": (1, "A10G"), "llm-large": (2, "A100-80G")}
    for name, (tp_size, accelerator) in expected.items():
        schema = _schema(production[name])
        bundles = schema["placement_group_bundles"]
        assert schema["placement_group_strategy"] == "STRICT_PACK"
        assert len(bundles) == tp_size
        assert _llm_config(production[name]).engine_kwargs.get("tensor_parallel_size", 1) == tp_size
        for bundle in bundles:
            assert bundle["GPU"] == 1
            assert f"accelerator_type:{accelerator}" in bundle
            assert bundle["serving_node"] == 1  # never scheduled on spot nodes
        # bundle_per_worker has 2 CPUs; the replica actor (num_cpus 1) joins TP rank 0's bundle.
        assert [bundle["CPU"] for bundle in bundles] == [3] + [2] * (tp_size - 1)


def test_tiers_autoscale_on_ongoing_requests_with_backpressure(production) -> None:
    for name in ("llm-small", "llm-large"):
        schema = _schema(production[name])
        autoscaling = schema["autoscaling_config"]
        max_num_seqs = _llm_config(production[name]).engine_kwargs["max_num_seqs"]
        assert autoscaling["upscale_delay_s"] == 60
        assert autoscaling["downscale_delay_s"] == 300
        assert 1 <= autoscaling["min_replicas"] < autoscaling["max_replicas"]
        # Scale out before a replica's engine batch is full; never hold more than it batches.
        assert autoscaling["target_ongoing_requests"] < schema["max_ongoing_requests"]
        assert schema["max_ongoing_requests"] == max_num_seqs
        assert schema["max_queued_requests"] > 0


def test_cpu_deployments_autoscale_and_stay_on_on_demand_nodes(production) -> None:
    for name in ("ingress",):
        schema = _schema(production[name])
        assert schema["autoscaling_config"]["min_replicas"] >= 2
        # Only CPU serving nodes advertise it: GPU nodes keep their CPUs for the engines.
        assert schema["ray_actor_options"]["resources"] == {"gateway_node": 1}


def test_engine_args_reach_vllm_as_configured(production) -> None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    small = _llm_config(production["llm-small"]).get_engine_config().get_initialization_kwargs()
    large = _llm_config(production["llm-large"]).get_engine_config().get_initialization_kwargs()
    for kwargs in (small, large):
        assert kwargs["enable_prefix_caching"] is True
        assert kwargs["enable_chunked_prefill"] is True
        assert kwargs["max_num_seqs"] > 0 and kwargs["max_num_batched_tokens"] > 0
        assert kwargs["distributed_executor_backend"] == "ray"  # GPU path, not the CPU one
        assert "speculative_config" not in kwargs  # off by default (high-temperature traffic)
    assert small["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert small["served_model_name"] == ["cascade-small"]
    assert large["quantization"] in QUANTIZATION_METHODS and "marlin" in large["quantization"]
    assert large["tensor_parallel_size"] == 2
    assert large["max_model_len"] > small["max_model_len"]


def _speculative_blocks() -> dict[str, dict[str, Any]]:
    """The commented-out speculative_config blocks of production.yaml, by tier, uncommented."""
    text = PRODUCTION.read_text()
    blocks = {}
    for match in SPECULATIVE_BLOCK.finditer(text):
        tier = "small" if match.start() < text.index("        large:") else "large"
        indent = match.group("indent")
        yaml_text = "".join(
            line.replace(f"{indent}# ", indent, 1)
            for line in match.group(0).splitlines(keepends=True)
        )
        blocks[tier] = yaml.safe_load(yaml_text)["speculative_config"]
    return blocks


def test_documented_speculative_decoding_blocks_are_valid_vllm_config() -> None:
    from vllm.config import SpeculativeConfig
    from vllm.config.speculative import SpeculativeMethod

    from serve_app.tiers.deployment import llm_config_for_tier

    def literals(tp) -> set[str]:
        return {
            leaf for arg in get_args(tp) for leaf in (literals(arg) if get_args(arg) else {arg})
        }

    blocks = _speculative_blocks()
    assert {tier: block["method"] for tier, block in blocks.items()} == {
        "small": "eagle3",
        "large": "draft_model",
    }
    fields = {field.name for field in dataclasses.fields(SpeculativeConfig)}
    config = CascadeConfig.model_validate(_args(PRODUCTION))
    for tier_name, block in blocks.items():
        assert set(block) <= fields
        assert block["method"] in literals(SpeculativeMethod)
        tier: TierConfig = config.tiers[tier_name]
        enabled = tier.model_copy(
            update={"engine_kwargs": {**tier.engine_kwargs, "speculative_config": block}}
        )
        kwargs = llm_config_for_tier(enabled).get_engine_config().get_initialization_kwargs()
        assert kwargs["speculative_config"] == block


# ---- local vs production: one code path ------------------------------------------------------


def test_local_and_production_differ_only_by_config(local, production) -> None:
    assert set(local) == set(production) == DEPLOYMENTS
    for name in DEPLOYMENTS:
        assert local[name].func_or_class is production[name].func_or_class
        assert set(local[name].init_kwargs) == set(production[name].init_kwargs)
    for name in ("llm-small", "llm-large"):
        assert production[name].func_or_class.__name__ == "LLMServer"  # Ray Serve LLM's
        local_options, production_options = _schema(local[name]), _schema(production[name])
        for key in ("placement_group_bundles", "placement_group_strategy", "ray_actor_options"):
            assert key in local_options and key in production_options
        local_engine = _llm_config(local[name]).get_engine_config()
        production_engine = _llm_config(production[name]).get_engine_config()
        assert type(local_engine) is type(production_engine)
        # The only switch is the accelerator the config names: vLLM's CPU build vs CUDA.
        assert _llm_config(local[name]).accelerator_config.kind == "cpu"
        assert _llm_config(production[name]).accelerator_config.kind == "gpu"
        assert local_engine.get_initialization_kwargs()["distributed_executor_backend"] == "mp"


# ---- cluster files -----------------------------------------------------------------------


def test_cluster_yaml_is_a_valid_cluster_launcher_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(config)  # what `ray up` checks before touching AWS
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert not any(t in head["node_config"]["InstanceType"] for t in ("g5", "g6", "p4", "p5"))
    assert any("[gpu]" in command for command in config["setup_commands"])


def _serve_settings(env: dict[str, str | None]) -> dict[str, str | None]:
    return {k: v for k, v in env.items() if k.startswith("RAY_SERVE_")}


def _cluster_yaml_ray_env(key: str) -> dict[str, str | None]:
    config = yaml.safe_load(CLUSTER.read_text())
    start = next(command for command in config[key] if "ray start" in command)
    export = next(part for part in start.split("&&") if part.split()[0] == "export")
    return dict(word.split("=", 1) for word in export.split()[1:])


def test_every_production_node_starts_ray_with_the_same_serve_settings() -> None:
    """cluster.yaml's head and workers and every RayService container agree: a replica that
    moves to another node (or the other deployment method) keeps the same request path."""
    reference = _serve_settings(_cluster_yaml_ray_env("head_start_ray_commands"))
    assert reference, "cluster.yaml exports no Ray Serve settings"
    assert _serve_settings(_cluster_yaml_ray_env("worker_start_ray_commands")) == reference
    for manifest in (RAYSERVICE, RAYSERVICE_MIG):
        cluster = yaml.safe_load(manifest.read_text())["spec"]["rayClusterConfig"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            for container in group["template"]["spec"]["containers"]:
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert _serve_settings(env) == reference, (manifest.name, container["name"])


def test_cluster_gpu_types_serve_on_demand_and_spot_only_does_batch() -> None:
    node_types = yaml.safe_load(CLUSTER.read_text())["available_node_types"]
    args = CascadeConfig.model_validate(_args(PRODUCTION))
    spot = {
        name: t
        for name, t in node_types.items()
        if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    }
    assert set(spot) == {"gpu_batch_spot"}
    assert "serving_node" not in spot["gpu_batch_spot"]["resources"]
    assert spot["gpu_batch_spot"]["min_workers"] == 0
    small = node_types["gpu_small"]
    large = node_types["gpu_large"]
    for node_type in (small, large, node_types["cpu_serving"]):
        assert "InstanceMarketOptions" not in node_type["node_config"]
        assert node_type["resources"]["serving_node"] > 0
        assert 1 <= node_type["min_workers"] <= node_type["max_workers"]
    small_scaling = args.tiers["small"].deployment_config["autoscaling_config"]
    assert (small["min_workers"], small["max_workers"]) == (
        small_scaling["min_replicas"],
        small_scaling["max_replicas"],
    )
    assert large["resources"]["accelerator_type:A100-80G"] == 8  # the label the tier pins
    gateway_types = {name for name, t in node_types.items() if "gateway_node" in t["resources"]}
    assert gateway_types == {"cpu_serving"}


def test_rayservice_serves_exactly_the_production_config() -> None:
    assert _serve_config(RAYSERVICE) == _serve_config(PRODUCTION)
    groups = yaml.safe_load(RAYSERVICE.read_text())["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    by_name = {group["groupName"]: group for group in groups}
    assert set(by_name) == {"cpu-serving", "gpu-small", "gpu-large", "gpu-batch-spot"}
    assert "serving_node" not in by_name["gpu-batch-spot"]["rayStartParams"]["resources"]
    for name in ("cpu-serving", "gpu-small", "gpu-large"):
        assert "serving_node" in by_name[name]["rayStartParams"]["resources"]
        advertises_gateway = "gateway_node" in by_name[name]["rayStartParams"]["resources"]
        assert advertises_gateway == (name == "cpu-serving")


def test_mig_variant_changes_only_the_small_tier(offline_ray) -> None:
    production, mig = _args(PRODUCTION), copy.deepcopy(_args(RAYSERVICE_MIG))
    assert mig["tiers"]["small"] != production["tiers"]["small"]
    mig["tiers"]["small"] = production["tiers"]["small"]
    assert mig == production

    built = _build(_args(RAYSERVICE_MIG))
    (bundle,) = _schema(built["llm-small"])["placement_group_bundles"]
    assert bundle["GPU"] == 1 and bundle["mig_3g_40gb"] == 1
    assert not any(key.startswith("accelerator_type:") for key in bundle)
    groups = yaml.safe_load(RAYSERVICE_MIG.read_text())["spec"]["rayClusterConfig"][
        "workerGroupSpecs"
    ]
    (mig_group,) = [group for group in groups if group["groupName"] == "gpu-small-mig"]
    container = mig_group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == "1"
    assert "mig_3g_40gb" in mig_group["rayStartParams"]["resources"]


@pytest.mark.parametrize(
    ("source_is_local_dir", "downloads"), [(True, False), (False, True)], ids=["local", "hub"]
)
def test_tiers_skip_the_node_download_only_for_a_local_model_on_this_node(
    offline_ray, tmp_path: Path, source_is_local_dir: bool, downloads: bool
) -> None:
    import asyncio

    import ray

    from serve_app.tiers.deployment import SkipNodeInitForLocalModel, llm_config_for_tier

    tier = CascadeConfig.model_validate(_args(LOCAL)).tiers["small"]
    source = str(tmp_path) if source_is_local_dir else "meta-llama/Llama-3.1-8B-Instruct"
    llm_config = llm_config_for_tier(
        tier.model_copy(update={"model_source": source}), resolve_packaged=False
    )
    group = ray.util.placement_group([{"CPU": 0.1}])
    ray.get(group.ready(), timeout=60)
    try:
        callback = SkipNodeInitForLocalModel(llm_config, ctx_kwargs={"placement_group": group})
        asyncio.run(callback.on_before_node_init())
        assert callback.ctx.run_init_node is downloads
    finally:
        ray.util.remove_placement_group(group)


@pytest.mark.parametrize(
    "path", [LOCAL, PRODUCTION, RAYSERVICE, RAYSERVICE_MIG], ids=lambda p: p.name
)
def test_every_tier_serves_tool_calls_with_one_parser_vllm_knows(path: Path) -> None:
    """A valid OpenAI request with `tools` gets an answer, not vLLM's 400 ("auto tool choice
    requires --enable-auto-tool-choice and --tool-call-parser"), on whichever tier the router
    or an escalation picks, and both tiers parse tool calls the same way."""
    from vllm.tool_parsers import ToolParserManager

    config = CascadeConfig.model_validate(_args(path))
    parsers = set()
    for name, tier in config.tiers.items():
        assert tier.engine_kwargs.get("enable_auto_tool_choice") is True, name
        parsers.add(tier.engine_kwargs.get("tool_call_parser"))
    (parser,) = parsers
    assert ToolParserManager.get_tool_parser(parser) is not None


def test_deployments_a_config_leaves_unbounded_do_not_inherit_serves_limit_of_5(
    offline_ray,
) -> None:
    """Left out of a config, the ingress, cache and router still take as many requests at once
    as the ingress admits (Serve's default of 5 would queue the sixth in the proxy)."""
    args = _args(LOCAL)
    # The shipped router and cache have none.
    args["router"]["placement"] = args["cache"]["placement"] = "deployment"
    for section in ("ingress", "cache", "router"):
        args[section].get("deployment_config", {}).pop("max_ongoing_requests", None)
    built = _build(args)
    admitted = CascadeConfig.model_validate(args).ingress.max_in_flight
    assert _schema(built["ingress"])["max_ongoing_requests"] > admitted
    for helper in ("semantic-cache", "router"):
        assert _schema(built[helper])["max_ongoing_requests"] >= admitted, helper


def test_clients_cannot_switch_the_quality_gate_off_unless_the_operator_allows_it() -> None:
    from serve_app.config import QualityConfig
    from serve_app.gateway.pipeline import _quality_mode

    off = {"x-cascade-quality": "off"}
    assert _quality_mode(QualityConfig(), off) == QualityConfig().stream_mode
    assert _quality_mode(CascadeConfig.model_validate(_args(PRODUCTION)).quality, off) != "off"
    assert _quality_mode(QualityConfig(allow_client_override=True), off) == "off"


def test_only_a_router_worth_a_hop_gets_a_deployment(offline_ray, tmp_path: Path) -> None:
    """The shipped router (a linear model over prompt features) scores in the ingress, so no
    router replica is started and no request pays a hop to one. A checkpoint that runs an
    encoder (an HF classifier), or a router deployment the operator sized, gets one."""
    args = _args(LOCAL)
    assert "router" not in _build(args)

    sized = copy.deepcopy(args)
    sized["router"]["deployment_config"] = {"num_replicas": 2}
    assert _schema(_build(sized)["router"])["num_replicas"] == 2

    classifier = tmp_path / "classifier-router"
    classifier.mkdir()
    (classifier / "router_card.json").write_text(json.dumps({"threshold": 0.5}))
    encoder = copy.deepcopy(args)
    encoder["router"] = {"checkpoint": str(classifier)}
    assert "router" in _build(encoder)


def test_the_cache_looks_up_in_the_ingress_where_its_store_allows(offline_ray) -> None:
    """The shipped configs start no cache replica: each request's lookup and store skip a
    deployment hop. An Edge shard belongs to one process, so an ingress that may scale out keeps
    a cache deployment, as does a cache deployment the operator sized; a sharing gateway with an
    Edge store uses the first application's."""
    local = _args(LOCAL)
    assert "semantic-cache" not in _build(local)
    assert "semantic-cache" not in _build(_args(PRODUCTION))  # a Qdrant server, 2-8 ingresses

    scaled = copy.deepcopy(local)
    scaled["ingress"]["deployment_config"]["autoscaling_config"] = {"max_replicas": 2}
    assert "semantic-cache" in _build(scaled)
    sized = copy.deepcopy(local)
    sized["cache"]["deployment_config"] = {"num_replicas": 1}
    assert "semantic-cache" in _build(sized)

    pinned_to_ingress = copy.deepcopy(scaled)
    pinned_to_ingress["cache"]["placement"] = "ingress"
    with pytest.raises(ValueError, match="single ingress replica"):
        _build(pinned_to_ingress)


@pytest.mark.parametrize("section", ["cache", "router"])
def test_sizing_a_deployment_the_ingress_replaces_is_refused(section: str) -> None:
    """`placement: ingress` starts no deployment: sizing one anyway is a config error naming
    both settings, not options silently ignored."""
    args = copy.deepcopy(_args(LOCAL))
    args[section]["placement"] = "ingress"
    args[section]["deployment_config"] = {"num_replicas": 2}
    with pytest.raises(ValueError, match=f"{section}.placement: ingress has none"):
        CascadeConfig.model_validate(args)
