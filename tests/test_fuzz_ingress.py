"""Schemathesis fuzzing of the live ingress: no 5xx, no hang, OpenAI-shaped errors.

At least 1,000 generated requests against the real ingress (its own `/openapi.json`), with
Hypothesis' health checks on: 340 negative cases for each public operation that takes a body
(chat, completions, route: refused by validation in milliseconds) and 12 positive ones per
operation (a chat or completion case reaches a tier, with at most 4 tokens to generate).
The admin operations are fuzzed on their own, with the stack's admin token.
"""

from __future__ import annotations

import os

from benchmarks.fuzz_ingress import (
    ADMIN_TOKEN_ENV,
    DEFAULT_NEGATIVE_CASES,
    DEFAULT_POSITIVE_CASES,
    FuzzReport,
    run_fuzz,
)

POSITIVE_CASES = int(os.environ.get("CASCADE_FUZZ_POSITIVE_CASES", DEFAULT_POSITIVE_CASES))
NEGATIVE_CASES = int(os.environ.get("CASCADE_FUZZ_NEGATIVE_CASES", DEFAULT_NEGATIVE_CASES))
MIN_CASES = int(os.environ.get("CASCADE_FUZZ_MIN_CASES", "1000"))
ADMIN_NEGATIVE_CASES = int(os.environ.get("CASCADE_FUZZ_ADMIN_NEGATIVE_CASES", "150"))
GENERATIONS = ("POST /v1/chat/completions", "POST /v1/completions")


def _assert_no_failures(report: FuzzReport) -> None:
    assert not report.server_errors, report.server_errors[:5]
    assert not report.hangs, report.hangs[:5]
    assert not report.malformed_errors, report.malformed_errors[:5]


def test_generated_requests_never_get_a_server_error_or_hang(cascade_url: str) -> None:
    report = run_fuzz(
        cascade_url, positive_cases=POSITIVE_CASES, negative_cases=NEGATIVE_CASES, timeout_s=60
    )
    print(report.summary())
    assert report.cases >= MIN_CASES, report.summary()
    _assert_no_failures(report)
    # The narrowed schema makes valid generations reach the tiers: some must be answered.
    answered = sum(report.statuses_by_operation[operation][200] for operation in GENERATIONS)
    assert answered > 0, report.summary()


def test_generated_admin_requests_never_get_a_server_error(cascade_url: str) -> None:
    # tests/conftest.py gives the test stack this token.
    admin_token = os.environ[ADMIN_TOKEN_ENV]
    report = run_fuzz(
        cascade_url,
        positive_cases=POSITIVE_CASES,
        negative_cases=ADMIN_NEGATIVE_CASES,
        timeout_s=60,
        admin_token=admin_token,
        admin_only=True,
    )
    print(report.summary())
    _assert_no_failures(report)
    # Authorized: the bodies were validated, not all refused with 403.
    assert report.statuses_by_operation["POST /admin/cache/invalidate"][200] > 0
