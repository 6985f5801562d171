"""Property-based fuzzing of the live ingress from its own OpenAPI schema (schemathesis).

Every operation of `/openapi.json` gets generated requests, valid ones (positive) and ones
that break the schema (negative). Each answer must be < 500, OpenAI-shaped when it is an
error, and arrive before the client timeout (no hang). Hypothesis runs with its health checks
on.

The budget is mostly negative cases, which validation refuses in milliseconds; positive
chat and completion cases each reach a tier, so there are few of them, and they are kept
cheap by narrowing the schema on the test side: `model` is one of the served models (else
nearly every case is a 404 that never reaches a tier), and `max_tokens` is required and at
most a few tokens. The admin operations are fuzzed only with the admin token (without it
every case would be the same 403), so that their bodies are validated.

    python -m benchmarks.fuzz_ingress                 # >= 1,000 cases (+ admin ones with a token)
    python -m benchmarks.fuzz_ingress --positive-cases 60 --negative-cases 500
    python -m benchmarks.fuzz_ingress --admin-only --admin-token ...
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from tqdm import tqdm

from benchmarks.loadgen import OPENAI_ERROR_FIELDS

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_GENERATED_TOKENS = 4
# A token limit every stack refuses at once: the ingress against a known context length,
# else the engine ("cannot be greater than max_model_len"), both before generating.
REFUSED_MAX_TOKENS = 2**31
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
# Per operation and mode. Of the public operations, 3 take a body (chat, completions, route)
# and get negative cases; those without inputs (models, health) have none (Unsatisfiable),
# and their one possible positive case is generated once.
DEFAULT_POSITIVE_CASES = 12
DEFAULT_NEGATIVE_CASES = 340
ADMIN_TOKEN_ENV = "CASCADE_ADMIN_TOKEN"
ADMIN_PREFIX = "/admin/"


@dataclass
class FuzzReport:
    cases: int = 0
    by_mode: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    # "POST /v1/chat/completions" -> its statuses
    statuses_by_operation: defaultdict[str, Counter[int]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    server_errors: list[str] = field(default_factory=list)
    malformed_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)
    max_latency_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "by_mode": dict(sorted(self.by_mode.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "statuses_by_operation": {
                operation: dict(sorted(statuses.items()))
                for operation, statuses in sorted(self.statuses_by_operation.items())
            },
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
    return narrowed_schema(document, models)


def narrowed_schema(document: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """`document` with every generation body's `model` pinned to `models` and its token
    fields capped at MAX_GENERATED_TOKENS (`max_tokens` required)."""
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bound_generation(body: Any, mode: GenerationMode) -> None:
    """Keep every generation a few tokens long, in place.

    A positive case is within the narrowed schema already; the cap is a safety net. A
    negative case that breaks only the narrowing (`max_tokens` missing or null, or more than
    a few) would be valid for the ingress and generate at length; it gets a limit the ingress
    refuses instead, so it stays a negative case and is answered in milliseconds.
    """
    if not isinstance(body, dict) or not {"messages", "prompt"} & body.keys():
        return
    positive = mode is GenerationMode.POSITIVE
    over_limit = MAX_GENERATED_TOKENS if positive else REFUSED_MAX_TOKENS
    for name in _TOKEN_FIELDS:
        value = body.get(name)
        if _is_number(value) and value > MAX_GENERATED_TOKENS:
            body[name] = over_limit
    if body.get("max_tokens") is None:  # null, like no limit, generates to the context's end
        body["max_tokens"] = MAX_GENERATED_TOKENS if positive else REFUSED_MAX_TOKENS


def check_response(
    response: Any, label: str, report: FuzzReport, *, operation: str | None = None
) -> None:
    """Count the status; a 5xx or an error that is not OpenAI-shaped goes into the report.

    `response` is any HTTP response with `status_code`, `text` and `json()` (schemathesis',
    requests', httpx'); `operation` ("POST /v1/completions") counts it per operation too."""
    report.statuses[response.status_code] += 1
    if operation is not None:
        report.statuses_by_operation[operation][response.status_code] += 1
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
    headers: dict[str, str] | None = None,
    progress: tqdm | None = None,
) -> None:
    session = requests.Session()

    # Health checks stay on: a strategy that filters too much or generates too slowly is a
    # fuzzer that quietly tests less than its case count says.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate])
    def one_case(case: schemathesis.Case) -> None:
        bound_generation(case.body, mode)
        label = f"{mode.value} {case.method} {case.path} {json.dumps(case.body, default=str)[:200]}"
        started = time.perf_counter()
        try:
            response = case.call(
                base_url=base_url, session=session, headers=headers, timeout=timeout_s
            )
        except requests.Timeout:
            report.hangs.append(label)
            return
        finally:
            report.cases += 1
            report.by_mode[mode.value] += 1
            report.max_latency_s = max(report.max_latency_s, time.perf_counter() - started)
            if progress is not None:
                progress.update()
        check_response(response, label, report, operation=f"{case.method} {case.path}")

    if cases <= 0:
        return
    try:
        one_case()
    except Unsatisfiable:
        # No negative case exists for an operation without inputs (GET /health): nothing to do.
        report.unsatisfiable.append(f"{mode.value} {operation.label}")


def _is_admin(path: str) -> bool:
    return path.startswith(ADMIN_PREFIX)


def run_fuzz(
    base_url: str = DEFAULT_URL,
    *,
    positive_cases: int = DEFAULT_POSITIVE_CASES,
    negative_cases: int = DEFAULT_NEGATIVE_CASES,
    timeout_s: float = 60.0,
    admin_token: str | None = None,
    admin_only: bool = False,
    show_progress: bool = False,
) -> FuzzReport:
    """Fuzz the operations with up to `positive_cases` valid and `negative_cases` invalid
    requests each: the public ones unless `admin_only`, the `/admin/` ones with
    `admin_token`."""
    schema = schemathesis.openapi.from_dict(fuzzing_schema(base_url))
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())
        if (bool(admin_token) if _is_admin(operation.path) else not admin_only)
    ]
    report = FuzzReport()
    budget = {GenerationMode.POSITIVE: positive_cases, GenerationMode.NEGATIVE: negative_cases}
    total = len(operations) * sum(budget.values())
    admin_headers = {"authorization": f"Bearer {admin_token}"} if admin_token else None
    with tqdm(total=total, disable=not show_progress, desc="fuzz cases") as progress:
        for operation in operations:
            for mode, cases in budget.items():
                fuzz_operation(
                    operation,
                    mode,
                    cases,
                    report,
                    base_url=base_url,
                    timeout_s=timeout_s,
                    headers=admin_headers if _is_admin(operation.path) else None,
                    progress=progress,
                )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="base URL of a running cascade")
    parser.add_argument(
        "--positive-cases",
        type=int,
        default=DEFAULT_POSITIVE_CASES,
        help="valid cases per operation (a chat or completion case reaches a tier)",
    )
    parser.add_argument(
        "--negative-cases",
        type=int,
        default=DEFAULT_NEGATIVE_CASES,
        help="schema-breaking cases per operation with inputs (refused in milliseconds)",
    )
    parser.add_argument(
        "--cases-per-operation",
        type=int,
        help="shorthand: this many positive and negative cases per operation",
    )
    parser.add_argument("--timeout-s", type=float, default=60.0, help="a slower answer is a hang")
    parser.add_argument(
        "--admin-token",
        default=os.environ.get(ADMIN_TOKEN_ENV),
        help=f"fuzz the admin operations with this bearer token (default: ${ADMIN_TOKEN_ENV})",
    )
    parser.add_argument(
        "--admin-only", action="store_true", help="only the admin operations (needs the token)"
    )
    args = parser.parse_args(argv)
    if args.admin_only and not args.admin_token:
        parser.error("--admin-only needs --admin-token")
    if args.cases_per_operation is not None:
        args.positive_cases = args.negative_cases = args.cases_per_operation
    started = time.perf_counter()
    report = run_fuzz(
        args.url,
        positive_cases=args.positive_cases,
        negative_cases=args.negative_cases,
        timeout_s=args.timeout_s,
        admin_token=args.admin_token or None,
        admin_only=args.admin_only,
        show_progress=True,
    )
    summary = {**report.summary(), "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, indent=2))
    for failure in report.server_errors + report.malformed_errors + report.hangs:
        print("FAIL", failure)


if __name__ == "__main__":
    main()
