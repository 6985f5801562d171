"""The router's operating point, in money or quality, and a client's ask for one request.

The router card's `operating_curve` records, for a grid of thresholds, the share of held-out
prompts sent to the large tier and the quality of the routed answers (as a fraction of
all-large quality, and as the recovered share of the small→large gap). An operator states a
target on that curve (`router.target`), and the threshold is derived from it when the router
loads; a client may move its own request within `router.client_bounds` (a model alias or the
`x-cascade-large-share` header).

Ray-free, like serve_app.routing.scorers: router training writes the curve with `to_card`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from serve_app.config import ClientBounds, RouterConfig, RouterTarget

OPERATING_CURVE_KEY = "operating_curve"
LARGE_SHARE_HEADER = "x-cascade-large-share"
# The heuristic's scores are centred on 0.5; a card without a threshold also starts there.
DEFAULT_THRESHOLD = 0.5
# A share read back off the curve may differ from the one asked for by rounding only.
_SHARE_TOLERANCE = 1e-9

ThresholdSource = Literal["threshold", "target", "card", "default"]


@dataclass(frozen=True)
class CurvePoint:
    """What the held-out prompts showed at one threshold."""

    threshold: float
    large_share: float
    quality: float
    """Mean outcome of the routed tiers as a fraction of all-large quality."""
    recovered_quality: float | None
    """(quality − all-small) / (all-large − all-small), the APGR-style recovered gap."""


@dataclass(frozen=True)
class OperatingCurve:
    """Large-tier share and quality at ascending thresholds (`score >= threshold` goes large).

    Between its points the curve is read linearly in the threshold.
    """

    thresholds: np.ndarray
    large_share: np.ndarray
    quality: np.ndarray
    recovered_quality: np.ndarray | None
    data: str
    """Which prompts the curve was measured on."""
    num_prompts: int
    all_large_quality: float
    all_small_quality: float

    def __post_init__(self) -> None:
        n = len(self.thresholds)
        if n < 2 or not np.all(np.diff(self.thresholds) > 0):
            raise ValueError("an operating curve needs two or more ascending thresholds")
        if len(self.large_share) != n or len(self.quality) != n:
            raise ValueError("an operating curve's columns must be equally long")
        if np.any(np.diff(self.large_share) > 1e-12):
            raise ValueError("the large share of an operating curve cannot grow with threshold")

    @classmethod
    def measure(
        cls,
        scores: Any,
        weak: Any,
        strong: Any,
        *,
        data: str,
        include: tuple[float, ...] = (),
        max_points: int = 256,
    ) -> OperatingCurve:
        """The curve of `scores` on prompts whose small/large outcomes are `weak`/`strong`:
        one point per distinct score (or, past `max_points`, per score quantile), plus
        `include` (e.g. the card's threshold) and the ends 0 and 1."""
        scores = np.asarray(scores, dtype=float)
        weak, strong = np.asarray(weak, dtype=float), np.asarray(strong, dtype=float)
        if not len(scores) == len(weak) == len(strong) > 0:
            raise ValueError("scores, weak and strong outcomes must be non-empty and equally long")
        large_mean, small_mean = float(strong.mean()), float(weak.mean())
        if large_mean <= 0:
            raise ValueError("all-large quality is 0: quality as its fraction is undefined")
        grid = np.unique(scores)
        if len(grid) > max_points:
            quantiles = np.linspace(0.0, 1.0, max_points)
            grid = np.unique(np.quantile(scores, quantiles, method="inverted_cdf"))
        grid = np.unique(np.concatenate([[0.0, 1.0], grid, np.asarray(include, dtype=float)]))
        to_large = scores[None, :] >= grid[:, None]
        quality = np.where(to_large, strong[None, :], weak[None, :]).mean(axis=1)
        gap = large_mean - small_mean
        return cls(
            thresholds=grid,
            large_share=to_large.mean(axis=1),
            quality=quality / large_mean,
            recovered_quality=(quality - small_mean) / gap if gap > 0 else None,
            data=data,
            num_prompts=len(scores),
            all_large_quality=large_mean,
            all_small_quality=small_mean,
        )

    # ---- the card ----------------------------------------------------------------------

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> OperatingCurve | None:
        entry = card.get(OPERATING_CURVE_KEY)
        if entry is None:
            return None
        points = entry["points"]
        recovered = points.get("recovered_quality")
        return cls(
            thresholds=np.asarray(points["threshold"], dtype=float),
            large_share=np.asarray(points["large_share"], dtype=float),
            quality=np.asarray(points["quality"], dtype=float),
            recovered_quality=None if recovered is None else np.asarray(recovered, dtype=float),
            data=str(entry["data"]),
            num_prompts=int(entry["num_prompts"]),
            all_large_quality=float(entry["all_large_quality"]),
            all_small_quality=float(entry["all_small_quality"]),
        )

    def to_card(self) -> dict[str, Any]:
        points: dict[str, list[float]] = {
            "threshold": self.thresholds.tolist(),
            "large_share": self.large_share.tolist(),
            "quality": self.quality.tolist(),
        }
        if self.recovered_quality is not None:
            points["recovered_quality"] = self.recovered_quality.tolist()
        return {
            "data": self.data,
            "num_prompts": self.num_prompts,
            "all_large_quality": self.all_large_quality,
            "all_small_quality": self.all_small_quality,
            "meaning": "at each threshold (route large when score >= threshold): the share of "
            "these prompts sent to the large tier, quality = mean outcome of the routed tiers "
            "/ all-large mean outcome, recovered_quality = (routed − all-small) / (all-large − "
            "all-small)",
            "points": points,
        }

    # ---- reading it --------------------------------------------------------------------

    def at(self, threshold: float) -> CurvePoint:
        """The curve at `threshold`, read linearly between its points."""
        recovered = None
        if self.recovered_quality is not None:
            recovered = float(np.interp(threshold, self.thresholds, self.recovered_quality))
        return CurvePoint(
            threshold=float(threshold),
            large_share=float(np.interp(threshold, self.thresholds, self.large_share)),
            quality=float(np.interp(threshold, self.thresholds, self.quality)),
            recovered_quality=recovered,
        )

    def threshold_for(self, target: RouterTarget) -> float:
        if target.large_share is not None:
            return self.threshold_for_large_share(target.large_share)
        assert target.quality is not None
        return self.threshold_for_quality(target.quality)

    def threshold_for_large_share(self, large_share: float) -> float:
        """The highest threshold at which the (interpolated) curve sends at least
        `large_share` of the prompts to the large tier: at it, the curve reads `large_share`."""
        reaching = np.flatnonzero(self.large_share >= large_share)
        if len(reaching) == 0:
            return float(self.thresholds[0])
        i = int(reaching[-1])
        if i == len(self.thresholds) - 1:
            return float(self.thresholds[i])
        high, low = float(self.large_share[i]), float(self.large_share[i + 1])
        fraction = (high - large_share) / (high - low)
        return float(self.thresholds[i] + fraction * (self.thresholds[i + 1] - self.thresholds[i]))

    def threshold_for_quality(self, quality: float) -> float:
        """The highest point of the curve whose measured quality reaches `quality`, the rule
        training calibrates the card's threshold by. Not interpolated: quality is not monotone
        in the threshold, and a point between two measured ones would promise quality the
        held-out prompts did not show. A stricter target never gives a higher threshold."""
        reaching = np.flatnonzero(self.quality >= quality)
        if len(reaching) == 0:
            return float(self.thresholds[0])  # everything large: all-large quality
        return float(self.thresholds[int(reaching[-1])])


# ---- the operator's operating point and a request's own ------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold a router decides at, where it came from, and what the card's curve
    expects of it."""

    threshold: float
    source: ThresholdSource
    target: dict[str, float] | None
    expected: CurvePoint | None
    curve_data: str | None
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "threshold_from": self.source,
            "target": self.target,
            "expected": None if self.expected is None else asdict(self.expected),
            "curve_data": self.curve_data,
            "note": self.note,
        }


def operating_point(
    config: RouterConfig, card_threshold: float | None, curve: OperatingCurve | None
) -> OperatingPoint:
    """The threshold a router loads with: explicit `threshold` > `target` on the card's curve
    > the card's threshold > 0.5."""
    data = None if curve is None else curve.data
    target = None if config.target is None else config.target.as_dict()
    note = None
    if config.threshold is not None:
        source: ThresholdSource = "threshold"
        threshold = config.threshold
        if config.target is not None:
            note = "router.threshold overrides router.target"
    elif config.target is not None and curve is not None:
        source, threshold = "target", curve.threshold_for(config.target)
    else:
        if config.target is not None:
            note = (
                "router.target ignored: this router has no operating curve (the heuristic, "
                "or a card without one)"
            )
        if card_threshold is not None:
            source, threshold = "card", card_threshold
        else:
            source, threshold = "default", DEFAULT_THRESHOLD
    expected = None if curve is None else curve.at(threshold)
    return OperatingPoint(threshold, source, target, expected, data, note)


class InvalidClientTarget(ValueError):
    """A request's own target is malformed; the gateway answers 400 naming `param`."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ClientAsk:
    """A request's own target: from a model alias or the large-share header."""

    asked_by: str
    """`model <alias>` or `header x-cascade-large-share`."""
    target: RouterTarget


def client_ask(
    config: RouterConfig, model: str | None, headers: Mapping[str, str] | None = None
) -> ClientAsk | None:
    """What this request asks for, if the operator lets clients ask (`client_bounds`): the
    `x-cascade-large-share` header when sent (finer than an alias; `headers` are the
    request's, case-insensitive as Starlette's are, or lower-case), else the model alias's
    target, else nothing. A malformed header raises InvalidClientTarget."""
    if config.client_bounds is None:
        return None
    header = None if headers is None else headers.get(LARGE_SHARE_HEADER)
    if header is not None:
        return ClientAsk(
            f"header {LARGE_SHARE_HEADER}", RouterTarget(large_share=_parse_share(header))
        )
    if model is not None and model in config.aliases:
        return ClientAsk(f"model {model}", config.aliases[model])
    return None


def _parse_share(value: str) -> float:
    try:
        share = float(value.strip())
    except ValueError:
        share = math.nan
    if not 0.0 <= share <= 1.0:
        raise InvalidClientTarget(
            f"{LARGE_SHARE_HEADER} must be a number from 0 to 1; got {value!r}.",
            param=LARGE_SHARE_HEADER,
        )
    return share


@dataclass(frozen=True)
class RequestOperatingPoint:
    """What a request's ask resolved to: the threshold it was routed at, within the bounds."""

    asked_by: str
    target: dict[str, float]
    honoured: bool
    clamped: bool
    threshold: float
    expected: CurvePoint | None
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "asked_by": self.asked_by,
            "target": self.target,
            "honoured": self.honoured,
            "clamped": self.clamped,
            "threshold": self.threshold,
            "expected": None if self.expected is None else asdict(self.expected),
            "note": self.note,
        }


def resolve_ask(
    ask: ClientAsk,
    bounds: ClientBounds | None,
    curve: OperatingCurve | None,
    default: OperatingPoint,
) -> RequestOperatingPoint:
    """The threshold for `ask`: its target on the curve, its large share clamped to `bounds`.

    Without bounds (clients may not ask) or a curve (the heuristic, say) the request is routed
    at the operator's threshold, and says so.
    """
    asked = ask.target.as_dict()
    if bounds is None or curve is None:
        note = (
            "this router has no operating curve (the heuristic, or a card without one): "
            "routed at the operator's threshold"
            if curve is None
            else "client targets are off (router.client_bounds unset)"
        )
        return RequestOperatingPoint(
            ask.asked_by, asked, False, False, default.threshold, default.expected, note
        )
    threshold = curve.threshold_for(ask.target)
    share = curve.at(threshold).large_share
    allowed = bounds.clamp(share)
    clamped = abs(allowed - share) > _SHARE_TOLERANCE
    note = None
    if clamped:
        threshold = curve.threshold_for_large_share(allowed)
        note = (
            f"clamped to the operator's bounds on the large share "
            f"[{bounds.min_large_share:g}, {bounds.max_large_share:g}]"
        )
    return RequestOperatingPoint(
        ask.asked_by, asked, True, clamped, threshold, curve.at(threshold), note
    )
