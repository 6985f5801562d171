"""Property-based fuzzing of the live ingress from its own OpenAPI schema (schemathesis).

Every operation of `/openapi.json` gets generated requests, valid ones (positive) and ones
that break the schema (negative). Each answer must be < 500, OpenAI-shaped when it is an
error, and arrive before the client timeout (no hang).

Valid generation is kept cheap by narrowing the schema on the test side: `model` is one of
the served models (else nearly every case is a 404 that never reaches a tier), and
`max_tokens` is required and at most a few tokens.

    python -m benchmarks.fuzz_ingress --cases-per-operation 120   # the full run, >= 1,000
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from tqdm import tqdm

from benchmarks.loadgen import OPENAI_ERROR_FIELDS

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_GENERATED_TOKENS = 4
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass
class FuzzReport:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    malformed_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)
    max_latency_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "statuses": dict(sorted(self.statuses.items())),
            "server_errors": len(self.server_errors),
            "malformed_errors": len(self.malformed_errors),
            "hangs": len(self.hangs),
            "max_latency_s": round(self.max_latency_s, 2),
            "operations_without_cases": self.unsatisfiable,
        }


def fuzzing_schema(base_url: str) -> dict[str, Any]:
    """The ingress's OpenAPI document, narrowed so valid cases reach a tier and stay cheap."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        document = client.get("/openapi.json").raise_for_status().json()
        models = [card["id"] for card in client.get("/v1/models").json()["data"]]
    document = copy.deepcopy(document)
    for path_item in document["paths"].values():
        for operation in path_item.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                _narrow(media["schema"], models)
    return document


def _narrow(schema: Any, models: list[str]) -> None:
    """Pin `model` to served ids and cap the token fields, in every request body variant."""
    if isinstance(schema, list):
        for item in schema:
            _narrow(item, models)
        return
    if not isinstance(schema, dict):
        return
    properties = schema.get("properties", {})
    if "model" in properties and ("messages" in properties or "prompt" in properties):
        properties["model"] = {"type": "string", "enum": models}
        for name in _TOKEN_FIELDS:
            properties[name] = {"type": "integer", "minimum": 1, "maximum": MAX_GENERATED_TOKENS}
        schema["required"] = sorted({*schema.get("required", []), "max_tokens"})
    for value in schema.values():
        _narrow(value, models)


def _cap_tokens(body: Any) -> None:
    """Negative cases may drop or inflate max_tokens; keep every generation a few tokens."""
    if not isinstance(body, dict):
        return
    for name in _TOKEN_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 4:
            body[name] = MAX_GENERATED_TOKENS
    if "max_tokens" not in body:
        body["max_tokens"] = MAX_GENERATED_TOKENS


def check_response(response: requests.Response, label: str, report: FuzzReport) -> None:
    """Count the status; a 5xx or an error that is not OpenAI-shaped goes into the report."""
    report.statuses[response.status_code] += 1
    if response.status_code >= 500:
        report.server_errors.append(f"{label} -> {response.status_code}: {response.text[:300]}")
    elif response.status_code >= 400:
        try:
            error = response.json()["error"]
            well_formed = set(error) == OPENAI_ERROR_FIELDS and bool(error["message"])
        except (ValueError, KeyError, TypeError):
            well_formed = False
        if not well_formed:
            report.malformed_errors.append(f"{label} -> {response.status_code}: {response.text}")


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    cases: int,
    report: FuzzReport,
    *,
    base_url: str,
    timeout_s: float,
    progress: tqdm | None = None,
) -> None:
    session = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one_case(case: schemathesis.Case) -> None:
        _cap_tokens(case.body)
        label = f"{mode.value} {case.method} {case.path} {json.dumps(case.body, default=str)[:200]}"
        started = time.perf_counter()
        try:
            response = case.call(base_url=base_url, session=session, timeout=timeout_s)
        except requests.Timeout:
            report.hangs.append(label)
            return
        finally:
            report.cases += 1
            report.max_latency_s = max(report.max_latency_s, time.perf_counter() - started)
            if progress is not None:
                progress.update()
        check_response(response, label, report)

    try:
        one_case()
    except Unsatisfiable:
        # No negative case exists for an operation without inputs (GET /health): nothing to do.
        report.unsatisfiable.append(f"{mode.value} {operation.label}")


def run_fuzz(
    base_url: str = DEFAULT_URL,
    *,
    cases_per_operation: int = 20,
    timeout_s: float = 60.0,
    show_progress: bool = False,
) -> FuzzReport:
    schema = schemathesis.openapi.from_dict(fuzzing_schema(base_url))
    operations = [result.ok() for result in schema.get_all_operations()]
    report = FuzzReport()
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    total = len(operations) * len(modes) * cases_per_operation
    with tqdm(total=total, disable=not show_progress, desc="fuzz cases") as progress:
        for operation in operations:
            for mode in modes:
                fuzz_operation(
                    operation,
                    mode,
                    cases_per_operation,
                    report,
                    base_url=base_url,
                    timeout_s=timeout_s,
                    progress=progress,
                )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="base URL of a running cascade")
    parser.add_argument(
        "--cases-per-operation",
        type=int,
        default=120,
        help="generated cases per operation and mode (positive, negative)",
    )
    parser.add_argument("--timeout-s", type=float, default=60.0, help="a slower answer is a hang")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = run_fuzz(
        args.url,
        cases_per_operation=args.cases_per_operation,
        timeout_s=args.timeout_s,
        show_progress=True,
    )
    summary = {**report.summary(), "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, indent=2))
    for failure in report.server_errors + report.malformed_errors + report.hangs:
        print("FAIL", failure)


if __name__ == "__main__":
    main()
