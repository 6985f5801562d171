"""Every shipped config validates; typos are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import CascadeConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SERVE_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if "applications" in p.read_text())


def _cascade_args(path: Path) -> dict:
    serve_config = yaml.safe_load(path.read_text())
    (app,) = serve_config["applications"]
    assert app["import_path"] == "serve_app.builder:build_app"
    return app["args"]


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_shipped_serve_config_validates(path: Path) -> None:
    config = CascadeConfig.model_validate(_cascade_args(path))
    assert set(config.tiers) == {"small", "large"}


def test_local_config_is_shipped() -> None:
    assert CONFIG_DIR / "local.yaml" in SERVE_CONFIGS


def test_unknown_key_is_rejected_by_name() -> None:
    args = _cascade_args(CONFIG_DIR / "local.yaml")
    args["cache"]["similarity_treshold"] = 0.5
    with pytest.raises(ValidationError, match="similarity_treshold"):
        CascadeConfig.model_validate(args)


def test_missing_tier_is_rejected() -> None:
    args = _cascade_args(CONFIG_DIR / "local.yaml")
    del args["tiers"]["large"]
    with pytest.raises(ValidationError, match="large"):
        CascadeConfig.model_validate(args)


def test_out_of_range_threshold_is_rejected() -> None:
    args = _cascade_args(CONFIG_DIR / "local.yaml")
    args["router"]["threshold"] = 1.5
    with pytest.raises(ValidationError, match="threshold"):
        CascadeConfig.model_validate(args)
