"""The Grafana dashboard and the cost report against a real Prometheus scraping the live stack.

A private Prometheus (devtools.prometheus, Debian's package) scrapes the stack's Ray cluster
through the targets Ray writes for Prometheus. A short workload goes through the cascade, and
its response headers say what the counters must show: requests by tier, cache hits, pinned
requests, escalations, errors, and spend and counterfactual equal to the sums of
`x-cascade-cost-usd` and `x-cascade-counterfactual-usd`, in total and by tenant (one request
goes through the API-key gateway as tenant `alpha`; the open gateway's callers are `other`).
Then every PromQL query of deploy/grafana/cascade-dashboard.json runs against that Prometheus
over the test's window: a query that returns no series, or only NaN, fails, as its panel would
say "No data". The report's `--prometheus` mode must give the summary the direct scrape gives,
of every tenant and of one, and `--plot` must draw its panels.

Timing, with no fixed sleeps: Ray's workers push metrics to the node's agent every
`metrics_report_interval_ms` (10 s), so counters are read once they have stopped moving for
longer than that. Prometheus computes `rate()` from the second sample of a series on, so a
first (priming) round of the workload makes every series the panels plot exist before the
measured round moves them; other tests may have sent traffic before, so the measured figures are
the differences between two snapshots around the measured round. Nothing else may use the stack
meanwhile (as for tests/test_api_cost.py's summary deltas).

Grafana variables in a query are replaced before it is sent (the dashboard uses none today):
`$__rate_interval` (4 scrape intervals, at least step + 1 scrape interval), `$__interval` and
`$__interval_ms` (the query step), `$__range`, `$__range_s`, `$__range_ms` (the test's window),
and a template variable by its current value (`.*` for "All" or none). Any other variable fails
the test, so a new one is added here rather than skipped.

Skipped only when `prometheus` is not installed and CASCADE_REQUIRE_SERVERS is unset (`make
servers` installs it; CI sets the variable): a missing server must not pass CI silently.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.prometheus import (
    SCRAPE_INTERVAL_S,
    PrometheusServer,
    ray_discovery_file,
    stack_session_dir,
)
from serve_app.accounting.cost_model import LEVERS
from serve_app.ops.report import (
    PLOT_PANELS,
    PrometheusCounters,
    discovered_metrics_urls,
    legend,
    prometheus_query,
    prometheus_query_range,
    scrape,
    summarize,
)
from tests.conftest import API_KEYS, KEYS_PREFIX
from tests.helpers import EMPTY_ANSWER, chat_body, wait_for_gateway

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "cascade-dashboard.json"
REQUIRE_SERVERS_ENV = "CASCADE_REQUIRE_SERVERS"
# Ray's workers push metrics to their node's agent this often (Ray's own setting and default).
RAY_EXPORT_INTERVAL_S = float(os.environ.get("RAY_metrics_report_interval_ms", "10000")) / 1000
# Counters are taken as complete once unchanged for longer than one push plus two scrapes.
QUIET_S = RAY_EXPORT_INTERVAL_S + 2 * SCRAPE_INTERVAL_S + 4
SETTLE_TIMEOUT_S = 180.0
TARGETS_TIMEOUT_S = 60.0
# Headers carry dollars with 10 decimals: each request's figure is off by up to 5e-11.
USD_ABS_TOLERANCE_PER_REQUEST = 1e-10
MAX_TOKENS = 24  # short answers: a cut at the client's max_tokens is complete, and cached

# (counter, label) pairs the snapshots hold: every figure the workload is checked against.
COUNTERS: tuple[tuple[str, str | None], ...] = (
    ("requests", None),
    ("requests", "tier"),
    ("requests", "cache"),
    ("requests", "route"),
    ("cost_usd", None),
    ("cost_usd", "component"),
    ("cost_usd", "tenant"),
    ("counterfactual_usd", None),
    ("lever_saved_usd", "lever"),
    ("lever_cost_usd", "lever"),
    ("escalations", "reason"),
    ("errors", "status"),
    ("cache_lookups", "result"),
    ("ttft_s_count", None),
)

# Panels (title prefix, refId) the workload must lift above zero at some point of the window.
MUST_RISE = (
    ("Dollars per hour", "A"),  # spent
    ("Dollars per hour", "B"),  # counterfactual
    ("Dollars per hour", "C"),  # saved: a cache hit and a pinned small answer
    ("Tier split", "A"),
    ("Cache hit rate", "A"),
    ("Spend by tenant", "A"),
)
KEYED_TENANT = "alpha"  # the workload's request through the API-key gateway
# Over two of vLLM's KV blocks (128 tokens on CPU, 16 on GPU) long: a second question after it
# hits the prefix cache.
QUIZ_SYSTEM_PROMPT = "You answer questions of a food quiz with yes or no, nothing else. " * 20

requires_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None and not os.environ.get(REQUIRE_SERVERS_ENV),
    reason="prometheus is not installed (`make servers` installs Debian's package); "
    f"set {REQUIRE_SERVERS_ENV}=1 to fail instead",
)

Snapshot = dict[str, float]


@dataclass(frozen=True)
class DashboardTarget:
    panel: str
    ref_id: str
    expr: str
    legend_format: str

    @property
    def test_id(self) -> str:
        return f"{re.sub(r'[^a-z0-9]+', '-', self.panel.lower())[:40].strip('-')}/{self.ref_id}"


def dashboard_targets() -> list[DashboardTarget]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        DashboardTarget(panel["title"], target["refId"], target["expr"], target["legendFormat"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def template_values() -> dict[str, str]:
    """The dashboard's template variables at their current values ("All": any)."""
    values = {}
    for variable in json.loads(DASHBOARD.read_text()).get("templating", {}).get("list", []):
        if variable.get("type") == "datasource":
            continue
        current = variable.get("current", {}).get("value", ".*")
        if isinstance(current, list):
            current = "|".join(current)
        values[variable["name"]] = ".*" if current in ("$__all", "", None) else current
    return values


def grafana_expr(expr: str, *, range_s: float, step_s: float) -> str:
    """`expr` as Grafana would send it over a `range_s` window at `step_s` resolution."""
    rate_interval_s = max(4 * SCRAPE_INTERVAL_S, step_s + SCRAPE_INTERVAL_S)
    values = {
        **template_values(),
        "__rate_interval": f"{math.ceil(rate_interval_s)}s",
        "__interval": f"{math.ceil(step_s)}s",
        "__interval_ms": str(math.ceil(step_s * 1000)),
        "__range": f"{math.ceil(range_s)}s",
        "__range_s": str(math.ceil(range_s)),
        "__range_ms": str(math.ceil(range_s * 1000)),
    }

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"dashboard variable ${name} has no test value: add it here"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def _key(metric: str, label: str | None, value: str) -> str:
    return f"{metric}{{{label}={value!r}}}" if label else metric


def snapshot(url: str) -> Snapshot:
    """Every counter of COUNTERS, summed over replicas and nodes, as Prometheus has it now."""
    counters = PrometheusCounters(url)
    figures: Snapshot = {}
    for metric, label in COUNTERS:
        if metric.endswith("_count"):  # a histogram's observation count, not a `_total`
            rows = prometheus_query(url, f"sum(ray_cascade_{metric})")
            figures[metric] = sum(float(row["value"][1]) for row in rows)
            continue
        for value, total in counters.sum_by(metric, label).items():
            figures[_key(metric, label, value)] = total
    return figures


def settled(
    url: str, done: Callable[[Snapshot], bool] = lambda _: True, timeout_s: float = SETTLE_TIMEOUT_S
) -> Snapshot:
    """The counters once `done` holds and they have not moved for QUIET_S (every worker has
    pushed what it counted before the call, and Prometheus has scraped it)."""
    deadline_s = time.monotonic() + timeout_s
    last = snapshot(url)
    last_change_s = time.monotonic()
    while not (done(last) and time.monotonic() - last_change_s >= QUIET_S):
        if time.monotonic() > deadline_s:
            raise AssertionError(
                f"counters did not settle within {timeout_s:.0f} s (is something else using "
                f"the stack?): {last}"
            )
        time.sleep(SCRAPE_INTERVAL_S)  # between Prometheus queries, not instead of them
        current = snapshot(url)
        if current != last:
            last, last_change_s = current, time.monotonic()
    return last


def delta(before: Snapshot, after: Snapshot, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]

    @property
    def usd(self) -> float:
        return float(self.headers["x-cascade-cost-usd"])

    @property
    def counterfactual_usd(self) -> float:
        return float(self.headers["x-cascade-counterfactual-usd"])


def _post(
    http: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Answer:
    response = http.post("/v1/chat/completions", json=body, headers=headers)
    return Answer(response.status_code, dict(response.headers))


def send_workload(http: httpx.Client, keys_http: httpx.Client, capital_of: str) -> list[Answer]:
    """One of each thing the dashboard shows: a routed miss and its cache hit, a pinned request,
    an escalation (the small tier's empty answer), an unknown model (404), two questions after
    one system prompt (a prefix-cache hit), and last a configured tenant's request (through the
    API-key gateway)."""
    tag = _tag()
    question = chat_body(f"What is the capital of {capital_of}? (dashboard run {tag})")
    question["max_tokens"] = MAX_TOKENS
    answers = [_post(http, question), _post(http, question)]
    # Uncached, so that the pinned tier answers (pinned lever) whatever an earlier run stored.
    pinned = chat_body(f"Name a planet. ({tag})", model="cascade-small", max_tokens=16, cache=False)
    answers.append(_post(http, pinned))
    answers.append(
        _post(http, chat_body(f"Tell me about dogs. ({tag})", cache=False, **EMPTY_ANSWER))
    )
    answers.append(_post(http, chat_body("Hello?", model="no-such-model")))
    # Two questions after one long system prompt: the second reuses the first's KV blocks, so
    # the prefix-cache panel has hits to plot whatever else the stack served before.
    for fruit in ("apple", "pear"):
        shared_prefix = chat_body(f"Is a {fruit} a fruit? ({tag})", model="cascade-small")
        shared_prefix["messages"].insert(0, {"role": "system", "content": QUIZ_SYSTEM_PROMPT})
        answers.append(_post(http, {**shared_prefix, "max_tokens": 4, "cache": False}))
    keyed = chat_body(f"Name a fruit. ({tag})", model="cascade-small", max_tokens=16, cache=False)
    bearer = {"authorization": f"Bearer {API_KEYS[KEYED_TENANT][0]}"}
    answers.append(_post(keys_http, keyed, bearer))
    return answers


def _tag() -> str:
    # A number: the cache's near-miss guard never matches questions whose numbers differ, so a
    # run's question is a miss however many runs a persistent cache has seen.
    return f"{uuid.uuid4().int % 1_000_000:06d}"


def send_relayed_stream(http: httpx.Client) -> Answer:
    """A pinned stream is relayed token by token: the only kind that times the first token."""
    body = chat_body(
        f"Name three colours. ({_tag()})",
        model="cascade-small",
        stream=True,
        max_tokens=16,
    )
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.read()
    return Answer(response.status_code, dict(response.headers))


def _check_workload(answers: list[Answer]) -> None:
    """The workload did what the assertions on the counters assume."""
    statuses = [answer.status for answer in answers]
    assert statuses == [200, 200, 200, 200, 404, 200, 200, 200], statuses
    miss, hit, pinned, escalated, *_ = answers
    assert (miss.headers["x-cascade-cache"], hit.headers["x-cascade-cache"]) == ("miss", "hit")
    assert pinned.headers["x-cascade-route"] == "pinned"
    assert escalated.headers.get("x-cascade-escalation-reason") == "empty", escalated.headers


@dataclass
class Observed:
    """What the module's workload did, and what Prometheus counted around it."""

    prometheus: PrometheusServer
    answers: list[Answer]  # the measured round (not the stream, whose cost header is partial)
    keyed: Answer  # its request from a configured tenant (KEYED_TENANT)
    before: Snapshot
    after: Snapshot
    window_start_s: float
    window_end_s: float

    @property
    def answered(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.status == 200]

    def headers(self, name: str) -> list[str]:
        return [answer.headers[name] for answer in self.answered if name in answer.headers]


def _wait_for_targets(server: PrometheusServer) -> None:
    """Until Prometheus has scraped every target Ray lists, and at least one answered."""
    groups = json.loads(server.discovery_file.read_text())
    targets = [target for group in groups for target in group["targets"]]
    deadline_s = time.monotonic() + TARGETS_TIMEOUT_S
    while True:
        up = prometheus_query(server.url, 'up{job="ray"}')
        if len(up) >= len(targets) and any(row["value"][1] == "1" for row in up):
            return
        assert time.monotonic() < deadline_s, f"targets {targets} not scraped: {up}"
        time.sleep(SCRAPE_INTERVAL_S / 2)


@pytest.fixture(scope="module")
def keys_http(cascade_url: str) -> Iterator[httpx.Client]:
    """The stack's API-key gateway, whose callers carry their configured tenant."""
    with httpx.Client(base_url=cascade_url + KEYS_PREFIX, timeout=180) as client:
        wait_for_gateway(client, "API-key")
        yield client


@pytest.fixture(scope="module")
def observed(
    cascade_url: str,
    http: httpx.Client,
    keys_http: httpx.Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Observed]:
    discovery_file = ray_discovery_file(stack_session_dir(cascade_url))
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), discovery_file) as server:
        try:
            _wait_for_targets(server)
            # Priming round: every series the panels plot exists before the measured round.
            _check_workload(send_workload(http, keys_http, "Italy"))
            assert send_relayed_stream(http).status == 200
            before = settled(server.url)

            answers = send_workload(http, keys_http, "France")
            _check_workload(answers)
            answered = sum(answer.status == 200 for answer in answers)
            after = settled(server.url, lambda now: delta(before, now, "requests") >= answered)

            # The measured stream, after `after`: its cost header leaves out generated tokens.
            assert send_relayed_stream(http).status == 200
            settled(server.url, lambda now: delta(after, now, "ttft_s_count") >= 1)
        except BaseException:
            print(server.log_tail())
            raise
        keyed, window_end_s = answers[-1], time.time()
        yield Observed(server, answers, keyed, before, after, server.started_at_s, window_end_s)


@requires_prometheus
def test_counters_move_by_what_the_response_headers_say(observed: Observed) -> None:
    before, after = observed.before, observed.after
    answered = observed.answered

    assert delta(before, after, "requests") >= len(answered)
    for tier in set(observed.headers("x-cascade-tier")):
        expected = observed.headers("x-cascade-tier").count(tier)
        assert delta(before, after, _key("requests", "tier", tier)) >= expected, tier
    hits = observed.headers("x-cascade-cache").count("hit")
    assert delta(before, after, _key("requests", "cache", "hit")) >= hits >= 1
    assert delta(before, after, _key("requests", "route", "pinned")) >= 1
    assert delta(before, after, _key("escalations", "reason", "empty")) >= 1
    assert delta(before, after, _key("errors", "status", "404")) >= 1
    exact_hits = delta(before, after, _key("cache_lookups", "result", "exact")) + delta(
        before, after, _key("cache_lookups", "result", "semantic")
    )
    assert exact_hits >= hits

    tolerance = USD_ABS_TOLERANCE_PER_REQUEST * len(answered)
    spent = sum(answer.usd for answer in answered)
    counterfactual = sum(answer.counterfactual_usd for answer in answered)
    assert delta(before, after, "cost_usd") == pytest.approx(spent, rel=1e-9, abs=tolerance)
    assert delta(before, after, "counterfactual_usd") == pytest.approx(
        counterfactual, rel=1e-9, abs=tolerance
    )
    # Spend by component adds up to the total.
    components = [key for key in after if key.startswith("cost_usd{component=")]
    assert sum(delta(before, after, key) for key in components) == pytest.approx(
        spent, rel=1e-9, abs=tolerance
    )
    # So does spend by tenant: the keyed request is its tenant's, the rest is `other`'s.
    keyed_usd = observed.keyed.usd
    assert delta(before, after, _key("cost_usd", "tenant", KEYED_TENANT)) == pytest.approx(
        keyed_usd, rel=1e-9, abs=USD_ABS_TOLERANCE_PER_REQUEST
    )
    assert delta(before, after, _key("cost_usd", "tenant", "other")) == pytest.approx(
        spent - keyed_usd, rel=1e-9, abs=tolerance
    )

    def net(lever: str) -> float:
        return delta(before, after, _key("lever_saved_usd", "lever", lever)) - delta(
            before, after, _key("lever_cost_usd", "lever", lever)
        )

    assert net("cache") > 0  # the hit avoided a whole answer
    assert delta(before, after, _key("lever_saved_usd", "lever", "pinned")) > 0  # pinned small
    assert delta(before, after, _key("lever_cost_usd", "lever", "fallback")) > 0  # escalation
    # What the levers saved, net, is what the answers cost less than all-large without cache.
    assert sum(net(lever) for lever in LEVERS) == pytest.approx(
        counterfactual - spent, rel=1e-6, abs=tolerance
    )


@requires_prometheus
@pytest.mark.parametrize("target", dashboard_targets(), ids=lambda target: target.test_id)
def test_every_dashboard_query_returns_series(observed: Observed, target: DashboardTarget) -> None:
    range_s = observed.window_end_s - observed.window_start_s
    expr = grafana_expr(target.expr, range_s=range_s, step_s=SCRAPE_INTERVAL_S)
    series = prometheus_query_range(
        observed.prometheus.url,
        expr,
        observed.window_start_s,
        observed.window_end_s,
        SCRAPE_INTERVAL_S,
    )
    assert series, f"{target.panel} / {target.ref_id}: no data for {expr}"
    finite = [
        (series_["metric"], float(value))
        for series_ in series
        for _, value in series_["values"]
        if math.isfinite(float(value))
    ]
    assert finite, f"{target.panel} / {target.ref_id}: only NaN/Inf for {expr}: {series}"


def _panel_series(observed: Observed, target: DashboardTarget) -> list[dict[str, Any]]:
    range_s = observed.window_end_s - observed.window_start_s
    return prometheus_query_range(
        observed.prometheus.url,
        grafana_expr(target.expr, range_s=range_s, step_s=SCRAPE_INTERVAL_S),
        observed.window_start_s,
        observed.window_end_s,
        SCRAPE_INTERVAL_S,
    )


def _peak(series: list[dict[str, Any]]) -> float:
    values = [float(v) for s in series for _, v in s["values"] if math.isfinite(float(v))]
    return max(values, default=math.nan)


@requires_prometheus
def test_panels_show_what_the_workload_did(observed: Observed) -> None:
    """The legends a reader would see name every tier, component, lever, reason and status the
    workload produced, and the money, tier and cache panels rose above zero."""
    tiers = set(observed.headers("x-cascade-tier"))
    expected_labels = {
        "tier": tiers,
        "component": tiers | {"cache", "router"},
        "lever": {"cache", "pinned", "fallback", "routing"},
        "reason": set(observed.headers("x-cascade-escalation-reason")),
        "status": {"404"},
        "tenant": {KEYED_TENANT, "other"},
    }
    for target in dashboard_targets():
        labels = re.findall(r"\{\{\s*(\w+)\s*\}\}", target.legend_format)
        for label in labels:
            if label not in expected_labels:
                continue
            series = _panel_series(observed, target)
            shown = {legend("{{" + label + "}}", s["metric"]) for s in series}
            missing = expected_labels[label] - shown
            assert not missing, f"{target.panel}: no {label} {missing} (shown: {shown})"

    for panel_prefix, ref_id in MUST_RISE:
        (target,) = [
            t
            for t in dashboard_targets()
            if t.panel.startswith(panel_prefix) and t.ref_id == ref_id
        ]
        peak = _peak(_panel_series(observed, target))
        assert peak > 0, f"{target.panel} / {ref_id} never rose above 0 (peak {peak})"


def _flat(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(left: dict[str, Any], right: dict[str, Any]) -> bool:
    """Equal keys, numbers equal but for float summation order, the rest equal."""
    return left.keys() == right.keys() and all(
        value == pytest.approx(right[key], rel=1e-9, abs=1e-12)
        if isinstance(value, float)
        else value == right[key]
        for key, value in left.items()
    )


@requires_prometheus
def test_report_reads_the_same_summary_from_prometheus_as_from_the_scrape(
    observed: Observed,
) -> None:
    urls = discovered_metrics_urls(observed.prometheus.discovery_file)
    assert urls
    deadline_s = time.monotonic() + 4 * SCRAPE_INTERVAL_S + RAY_EXPORT_INTERVAL_S
    prometheus = PrometheusCounters(observed.prometheus.url)
    while True:
        scraped = scrape(urls)
        direct = _flat(summarize(scraped)) | _flat({KEYED_TENANT: summarize(scraped, KEYED_TENANT)})
        via_prometheus = _flat(summarize(prometheus)) | _flat(
            {KEYED_TENANT: summarize(prometheus, KEYED_TENANT)}
        )
        # Prometheus lags the endpoints by up to a scrape interval: equal once both are current.
        if _same(via_prometheus, direct):
            break
        assert time.monotonic() < deadline_s, {
            key: (via_prometheus.get(key), direct.get(key))
            for key in direct.keys() | via_prometheus.keys()
            if via_prometheus.get(key) != direct.get(key)
        }
        time.sleep(SCRAPE_INTERVAL_S / 2)
    assert via_prometheus["requests"] >= observed.after["requests"]
    assert via_prometheus["cache_hits"] >= 2  # one per round
    assert via_prometheus[f"{KEYED_TENANT}.requests"] >= 2  # one per round
    assert 0 < via_prometheus[f"{KEYED_TENANT}.spent_usd"] < via_prometheus["spent_usd"]


@requires_prometheus
def test_report_cli_prints_the_summary_and_draws_the_panels(
    observed: Observed, tmp_path: Path
) -> None:
    url = observed.prometheus.url
    command = [sys.executable, "-m", "serve_app.ops.report", "--prometheus", url]
    printed = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert printed.returncode == 0, printed.stderr
    summary = json.loads(printed.stdout)
    assert summary["requests"] >= observed.after["requests"]
    assert summary["spent_usd"] > 0 and summary["counterfactual_usd"] > 0
    one_tenant = subprocess.run(
        [*command, "--tenant", KEYED_TENANT, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert one_tenant.returncode == 0, one_tenant.stderr
    keyed = json.loads(one_tenant.stdout)
    assert keyed["tenant"] == KEYED_TENANT and keyed["requests"] >= 2
    assert 0 < keyed["spent_usd"] < summary["spent_usd"]

    png = tmp_path / "cascade.png"
    since = f"{math.ceil(time.time() - observed.window_start_s) + 60}s"
    drawn = subprocess.run(
        [*command, "--plot", str(png), "--since", since],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert drawn.returncode == 0, drawn.stderr
    assert "no data" not in drawn.stderr, drawn.stderr  # every panel drew a series
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "blended $/M"
        in subprocess.run(
            command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
        ).stdout
    )


def test_the_reports_plots_are_the_dashboards_panels() -> None:
    """`--plot` draws the dashboard's own queries, so the PNG and Grafana cannot drift apart."""
    targets = {(t.panel, t.expr): t.legend_format for t in dashboard_targets()}
    for panel in PLOT_PANELS:
        for legend_format, expr in panel.targets:
            assert (panel.title, expr) in targets, f"{panel.title}: {expr} not in the dashboard"
            assert targets[(panel.title, expr)] == legend_format
