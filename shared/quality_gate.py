"""The quality gate: deploy a fine-tune only when the evaluation shows it better than its base model.

Pure (no Azure SDK). The decision is a paired bootstrap over the test records, not a comparison of two means: per
record, the improvement is tuned minus base (base minus tuned for a lower-is-better metric such as `eval_loss`), and
the 95% percentile interval of its mean over `RESAMPLES` resamples with a fixed seed (`scipy.stats.bootstrap`) says
how sure the evaluation is. A small test split makes a wide interval: a gate that only compared means would flip on
it, which users of other products report.

    verdict      when                                                    enforce   report
    better       lower bound > min_improvement                           deploy    deploy
    worse        upper bound < 0, or the tuned model's loss diverged     hold      deploy
    inconclusive neither                                                 hold      deploy
    undecided    fewer than EVAL_MIN_RECORDS paired records              hold only when the point estimate is worse

A new version of a model line (the challenger) also faces the version in service (the champion) on the same test
records (`decide_against_champion`): the same bootstrap, but the bar is "not worse", not "better": it is held only
when its interval shows it worse than the champion (upper bound below 0), or when too few records leave only a worse
point estimate. A retrained model that is merely as good as the one in service still ships (fresher data).

scipy is imported when a decision is made (about 1 s), never at the app's cold start.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

GATES = ("enforce", "report", "off")
# Metrics the gate can decide on, and whether higher is better (the evaluation's per-record keys).
METRICS: dict[str, bool] = {"eval_loss": False, "perplexity": False, "rougeL": True, "chrf": True}
RESAMPLES = 9999
SEED = 20240605
CONFIDENCE = 0.95
Verdict = Literal["better", "worse", "inconclusive", "undecided"]


class GateError(ValueError):
    """The report does not hold what the gate needs (the metric, paired values); the message says which."""


@dataclass(frozen=True)
class GatePolicy:
    """EVAL_GATE, EVAL_METRIC, EVAL_MIN_IMPROVEMENT, EVAL_MIN_RECORDS, after the upload's overrides."""

    gate: str = "enforce"
    metric: str = "eval_loss"
    min_improvement: float = 0.0  # in the metric's units, in the better direction
    min_records: int = 20

    @classmethod
    def for_run(cls, settings: Any, overrides: Mapping[str, Any]) -> "GatePolicy":
        """The settings, with the upload's `eval_gate`, `eval_metric` and `eval_min_improvement` over them."""
        return cls(gate=str(overrides.get("eval_gate") or settings.eval_gate),
                   metric=str(overrides.get("eval_metric") or settings.eval_metric),
                   min_improvement=float(overrides.get("eval_min_improvement", settings.eval_min_improvement)),
                   min_records=int(settings.eval_min_records))


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why; `deploy` False means the run is Held (registered, no endpoint)."""

    gate: str
    metric: str
    higher_is_better: bool
    records: int
    base: float | None  # the metric's mean over the paired records
    tuned: float | None
    improvement: float | None  # mean per-record improvement, positive = the fine-tune is better
    low: float | None  # its 95% interval
    high: float | None
    min_improvement: float
    verdict: Verdict
    deploy: bool
    reason: str
    seed: int = SEED
    resamples: int = RESAMPLES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_interval(improvements: list[float], seed: int = SEED, resamples: int = RESAMPLES,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `improvements` (one value per record), fixed seed."""
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(improvements, dtype=float)
    if np.all(data == data[0]):  # every resample has the same mean
        return float(data[0]), float(data[0])
    result = bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
                       vectorized=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def decide(per_record: Mapping[str, Mapping[str, list]], policy: GatePolicy, against: str = "base",
           reference: str = "the base model") -> GateDecision:
    """Decide on the evaluation's per-record scores (`{metric: {"base": [...], "tuned": [...]}}`, paired by
    position; None stands for a value that is not a number). `against` names the scores the fine-tune is compared
    with ("base", or "champion": the line's version in service), `reference` how the reasons call them. GateError
    when the metric is missing or unpaired."""
    if policy.metric not in METRICS:
        raise GateError(f"EVAL_METRIC {policy.metric!r} is not one of {', '.join(METRICS)}")
    higher = METRICS[policy.metric]
    scores = per_record.get(policy.metric)
    if not scores or against not in scores or "tuned" not in scores:
        raise GateError(f"the evaluation has no per-record {policy.metric} scores"
                        + ("" if against == "base" else f" of {reference}"))
    base, tuned = list(scores[against]), list(scores["tuned"])
    if len(base) != len(tuned):
        raise GateError(f"{policy.metric}: {len(base)} {against} scores but {len(tuned)} tuned ones")
    common = dict(gate=policy.gate, metric=policy.metric, higher_is_better=higher,
                  min_improvement=policy.min_improvement)
    usable = [(b, t) for b, t in zip(base, tuned) if _finite(b)]
    diverged = sum(1 for _, t in usable if not _finite(t))
    if diverged and not higher:
        # A loss that is not a number (or infinite) is as bad as it gets: training diverged.
        return _held_unless_report(GateDecision(
            **common, records=len(usable), base=_mean([b for b, _ in usable]), tuned=None, improvement=None,
            low=None, high=None, verdict="worse", deploy=False,
            reason=f"the fine-tuned model's {policy.metric} is not a number on {diverged} of {len(usable)} test "
                   f"records: training diverged"))
    pairs = [(b, t) for b, t in usable if _finite(t)]
    improvements = [(t - b) if higher else (b - t) for b, t in pairs]
    point = _mean(improvements)
    mean_base, mean_tuned = _mean([b for b, _ in pairs]), _mean([t for _, t in pairs])
    direction = "higher" if higher else "lower"
    if len(pairs) < policy.min_records:
        worse = point is not None and point < 0
        deploy = policy.gate != "enforce" or not worse
        what = "worse" if worse else "not worse"
        return GateDecision(**common, records=len(pairs), base=mean_base, tuned=mean_tuned, improvement=point,
                            low=None, high=None, verdict="undecided", deploy=deploy,
                            reason=f"cannot decide: {len(pairs)} paired test records, fewer than EVAL_MIN_RECORDS "
                                   f"({policy.min_records}); the point estimate is {what} than {reference}"
                                   + ("" if deploy else ", so the run is held"))
    low, high = paired_interval(improvements)
    interval = f"improvement {point:+.4g}, 95% interval [{low:+.4g}, {high:+.4g}] over {len(pairs)} records"
    if low > policy.min_improvement:
        return GateDecision(**common, records=len(pairs), base=mean_base, tuned=mean_tuned, improvement=point,
                            low=low, high=high, verdict="better", deploy=True,
                            reason=f"better than {reference} ({policy.metric} {direction} is better): {interval}"
                                   f", lower bound above EVAL_MIN_IMPROVEMENT {policy.min_improvement:g}")
    if high < 0:
        verdict, why = "worse", f"worse than {reference} ({policy.metric}, {direction} is better): {interval}"
    else:
        verdict, why = "inconclusive", (f"not shown better than {reference} by more than EVAL_MIN_IMPROVEMENT "
                                        f"{policy.min_improvement:g} ({policy.metric}): {interval}")
    return _held_unless_report(GateDecision(**common, records=len(pairs), base=mean_base, tuned=mean_tuned,
                                            improvement=point, low=low, high=high, verdict=verdict, deploy=False,
                                            reason=why))


def decide_against_champion(per_record: Mapping[str, Mapping[str, list]], policy: GatePolicy,
                            reference: str = "the version in service") -> GateDecision:
    """The challenger (`tuned`) against the line's champion (`champion` in `per_record`, scored on the same records
    in the same evaluation): deployed unless the paired interval shows it worse (`high` below 0), whatever
    EVAL_MIN_IMPROVEMENT (that bar is the base model's); too few records hold it only on a worse point estimate, as
    against the base model. `report` deploys anyway, saying so. GateError as `decide`."""
    d = decide(per_record, GatePolicy(gate=policy.gate, metric=policy.metric, min_improvement=0.0,
                                      min_records=policy.min_records), against="champion", reference=reference)
    if d.verdict in ("worse", "undecided"):
        return d  # held (or deployed under report, or on a not-worse point estimate), the reason says why
    interval = "" if d.low is None else (f": improvement {d.improvement:+.4g}, 95% interval [{d.low:+.4g}, "
                                         f"{d.high:+.4g}] over {d.records} records")
    what = "better than" if d.verdict == "better" else "not shown worse than"
    return GateDecision(**{**d.to_dict(), "deploy": True,
                           "reason": f"{what} {reference} ({policy.metric}){interval}"})


def _held_unless_report(decision: GateDecision) -> GateDecision:
    if decision.gate == "report":
        return GateDecision(**{**decision.to_dict(), "deploy": True,
                               "reason": decision.reason + "; EVAL_GATE=report deploys it anyway"})
    return decision


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compare_every_metric(per_record: Mapping[str, Mapping[str, list]], policy: GatePolicy,
                         against: str = "base") -> dict[str, dict]:
    """Base (or, `against="champion"`, the line's version in service) against tuned on every metric the evaluation
    has, each with its own paired interval and verdict (what `GET /api/runs/{id}` and `chatft runs RUN_ID` show);
    only `policy.metric`'s decides. The mean of the model compared with is under its own key ("base",
    "champion")."""
    shown = {}
    for metric in METRICS:
        if metric not in per_record or against not in per_record[metric]:
            continue
        floor = policy.min_improvement if against == "base" else 0.0
        d = decide(per_record, GatePolicy(gate="report", metric=metric, min_improvement=floor,
                                          min_records=policy.min_records), against=against)
        shown[metric] = {against: d.base, "tuned": d.tuned, "improvement": d.improvement, "low": d.low,
                         "high": d.high, "records": d.records, "higher_is_better": d.higher_is_better,
                         "verdict": d.verdict}
    return shown
