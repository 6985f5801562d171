"""Schemathesis fuzzing of the ingress's request validation, in process (no stack needed).

The app below runs the ingress's own validation path (body limit, JSON parsing, schema,
context bounds) behind the same OpenAPI request schemas; thousands of generated bodies must
each get a 2xx or an OpenAI-shaped 4xx, never a crash. The live ingress is fuzzed end to end
in tests/test_fuzz_ingress.py.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hypothesis import Phase, given, settings
from schemathesis import GenerationMode

from benchmarks.fuzz_ingress import FuzzReport, check_response
from serve_app.config import LimitsConfig
from serve_app.gateway.request_limits import check_request_limits, read_body
from serve_app.protocol.errors import CascadeError, openai_error_body
from serve_app.protocol.openai_api import RequestKind, parse_request_body, request_json_schema

CASES_PER_OPERATION_AND_MODE = int(os.environ.get("CASCADE_FUZZ_VALIDATION_CASES", "60"))
MAX_MODEL_LEN = 2048


def _validation_app() -> FastAPI:
    app = FastAPI()
    limits = LimitsConfig()

    @app.exception_handler(CascadeError)
    async def _refused(_: Request, error: CascadeError) -> JSONResponse:
        return JSONResponse(openai_error_body(error), status_code=error.status_code)

    def validating_endpoint(kind: RequestKind):
        async def endpoint(request: Request) -> dict[str, bool]:
            raw = await read_body(request, limits)
            body = parse_request_body(raw, kind, max_depth=limits.max_json_depth)
            check_request_limits(body, kind, limits, MAX_MODEL_LEN)
            return {"valid": True}

        return endpoint

    for path, kind in (("/v1/chat/completions", "chat"), ("/v1/completions", "completion")):
        body_schema = {"application/json": {"schema": request_json_schema(kind)}}
        request_body = {"requestBody": {"required": True, "content": body_schema}}
        app.post(path, openapi_extra=request_body)(validating_endpoint(kind))
    return app


_SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", _validation_app())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_validation_answers_every_generated_body_without_crashing(
    path: str, mode: GenerationMode
) -> None:
    report = FuzzReport()
    operation = _SCHEMA[path]["POST"]

    # Health checks on, as in the live fuzzing (benchmarks/fuzz_ingress.py).
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=CASES_PER_OPERATION_AND_MODE,
        deadline=None,
        database=None,
        phases=[Phase.generate],
    )
    def one_case(case: schemathesis.Case) -> None:
        report.cases += 1
        check_response(case.call(), f"{mode.value} {path} {case.body!r:.200}", report)

    one_case()
    assert report.cases >= CASES_PER_OPERATION_AND_MODE // 2
    assert not report.server_errors, report.server_errors[:3]
    assert not report.malformed_errors, report.malformed_errors[:3]
    if mode is GenerationMode.POSITIVE:
        assert report.statuses[200] > 0  # the schema and the validator agree on valid bodies
