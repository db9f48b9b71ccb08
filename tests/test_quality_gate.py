"""The quality gate's decision on synthetic per-record scores: a paired bootstrap with a fixed seed."""

from __future__ import annotations

import math
import random

import pytest

from shared.config import Settings
from shared.quality_gate import GateError, GatePolicy, decide, decide_against_champion, paired_interval


def scores(base: list[float], tuned: list[float], metric: str = "eval_loss") -> dict:
    return {metric: {"base": base, "tuned": tuned}}


def noisy(n: int, mean: float, spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [mean + rng.gauss(0, spread) for _ in range(n)]


BASE = noisy(60, 3.0, 0.5, seed=1)


def test_a_clearly_better_fine_tune_is_deployed_with_its_interval():
    tuned = [b - 1.0 + d for b, d in zip(BASE, noisy(60, 0, 0.2, seed=2))]
    decision = decide(scores(BASE, tuned), GatePolicy())
    assert decision.verdict == "better" and decision.deploy
    assert decision.records == 60 and 0 < decision.low < decision.improvement < decision.high
    assert decision.improvement == pytest.approx(sum(BASE) / 60 - sum(tuned) / 60)
    assert decision.base > decision.tuned
    assert "lower bound above EVAL_MIN_IMPROVEMENT" in decision.reason


def test_a_clearly_worse_fine_tune_is_held_under_enforce_and_deployed_under_report():
    tuned = [b + 0.8 + d for b, d in zip(BASE, noisy(60, 0, 0.2, seed=3))]
    held = decide(scores(BASE, tuned), GatePolicy(gate="enforce"))
    assert held.verdict == "worse" and not held.deploy and held.high < 0
    assert "worse than the base model" in held.reason
    reported = decide(scores(BASE, tuned), GatePolicy(gate="report"))
    assert reported.verdict == "worse" and reported.deploy and "EVAL_GATE=report" in reported.reason


def test_noise_is_not_shown_better_and_is_held_under_enforce():
    tuned = [b + d for b, d in zip(BASE, noisy(60, 0, 0.5, seed=4))]
    decision = decide(scores(BASE, tuned), GatePolicy())
    assert decision.verdict == "inconclusive" and not decision.deploy
    assert decision.low < 0 < decision.high


def test_the_decision_is_reproducible_with_the_fixed_seed():
    tuned = [b - 0.05 + d for b, d in zip(BASE, noisy(60, 0, 0.5, seed=5))]
    assert decide(scores(BASE, tuned), GatePolicy()) == decide(scores(BASE, tuned), GatePolicy())


def test_min_improvement_raises_the_bar():
    tuned = [b - 0.3 + d for b, d in zip(BASE, noisy(60, 0, 0.05, seed=6))]
    assert decide(scores(BASE, tuned), GatePolicy(min_improvement=0.0)).deploy
    too_little = decide(scores(BASE, tuned), GatePolicy(min_improvement=0.5))
    assert too_little.verdict == "inconclusive" and not too_little.deploy


def test_higher_is_better_metrics_count_improvement_upwards():
    base = noisy(40, 0.2, 0.05, seed=7)
    tuned = [b + 0.3 for b in base]
    decision = decide(scores(base, tuned, "rougeL"), GatePolicy(metric="rougeL"))
    assert decision.higher_is_better and decision.verdict == "better" and decision.improvement == pytest.approx(0.3)
    assert decide(scores(tuned, base, "rougeL"), GatePolicy(metric="rougeL")).verdict == "worse"


def test_too_few_records_cannot_decide_and_holds_only_a_worse_point_estimate_under_enforce():
    better = decide(scores([3.0, 3.1, 2.9], [2.0, 2.2, 2.1]), GatePolicy())
    assert better.verdict == "undecided" and better.deploy and better.low is None
    assert "cannot decide: 3 paired test records, fewer than EVAL_MIN_RECORDS (20)" in better.reason
    worse = decide(scores([2.0, 2.2, 2.1], [3.0, 3.1, 2.9]), GatePolicy())
    assert worse.verdict == "undecided" and not worse.deploy and "held" in worse.reason
    assert decide(scores([2.0, 2.2, 2.1], [3.0, 3.1, 2.9]), GatePolicy(gate="report")).deploy


def test_a_diverged_loss_is_worse():
    decision = decide(scores(BASE, [None] * 60), GatePolicy())
    assert decision.verdict == "worse" and not decision.deploy and "diverged" in decision.reason
    assert decide(scores(BASE, [math.nan] * 60), GatePolicy()).verdict == "worse"


def test_missing_or_unpaired_scores_are_a_clear_error():
    with pytest.raises(GateError, match="no per-record chrf"):
        decide(scores(BASE, BASE), GatePolicy(metric="chrf"))
    with pytest.raises(GateError, match="60 base scores but 2 tuned"):
        decide(scores(BASE, [1.0, 2.0]), GatePolicy())


def test_identical_improvements_have_a_point_interval():
    assert paired_interval([0.5] * 30) == (0.5, 0.5)


def test_the_policy_takes_the_uploads_overrides_over_the_settings():
    settings = Settings(eval_gate="enforce", eval_metric="eval_loss", eval_min_improvement=0.0)
    assert GatePolicy.for_run(settings, {}) == GatePolicy()
    policy = GatePolicy.for_run(settings, {"eval_gate": "report", "eval_metric": "chrf", "eval_min_improvement": 1.5})
    assert (policy.gate, policy.metric, policy.min_improvement) == ("report", "chrf", 1.5)


# ------------------------------------------------------------------ challenger against champion (a model line)


def against(champion: list[float], tuned: list[float]) -> dict:
    return {"eval_loss": {"base": BASE, "tuned": tuned, "champion": champion}}


CHAMPION = [b - 1.0 for b in BASE]  # the version in service: well above its base model


def test_a_challenger_better_than_the_version_in_service_is_deployed():
    tuned = [c - 0.3 + d for c, d in zip(CHAMPION, noisy(60, 0, 0.2, seed=11))]
    d = decide_against_champion(against(CHAMPION, tuned), GatePolicy(), reference="the version in service (v1)")
    assert d.verdict == "better" and d.deploy and 0 < d.low < d.high
    assert d.base == pytest.approx(sum(CHAMPION) / 60) and d.improvement == pytest.approx(d.base - d.tuned)
    assert d.reason.startswith("better than the version in service (v1)")


def test_a_challenger_worse_than_the_version_in_service_is_held_though_better_than_its_base():
    tuned = [c + 0.4 + d for c, d in zip(CHAMPION, noisy(60, 0, 0.2, seed=12))]
    assert decide(against(CHAMPION, tuned), GatePolicy()).verdict == "better"  # still beats the base model
    d = decide_against_champion(against(CHAMPION, tuned), GatePolicy(), reference="the version in service (v1)")
    assert d.verdict == "worse" and not d.deploy and d.high < 0
    assert "worse than the version in service (v1)" in d.reason
    reported = decide_against_champion(against(CHAMPION, tuned), GatePolicy(gate="report"))
    assert reported.deploy and "EVAL_GATE=report" in reported.reason


def test_a_challenger_as_good_as_the_version_in_service_is_not_worse_and_is_deployed():
    # Noise around the champion: not better, but its interval does not show it worse, and EVAL_MIN_IMPROVEMENT
    # (the bar against the base model) does not apply to the champion.
    tuned = [c + d for c, d in zip(CHAMPION, noisy(60, 0, 0.5, seed=13))]
    d = decide_against_champion(against(CHAMPION, tuned), GatePolicy(min_improvement=0.5))
    assert d.verdict == "inconclusive" and d.deploy and d.low < 0 < d.high and d.min_improvement == 0.0
    assert "not shown worse than the version in service" in d.reason
    assert d == decide_against_champion(against(CHAMPION, tuned), GatePolicy(min_improvement=0.5))  # fixed seed
    identical = decide_against_champion(against(CHAMPION, list(CHAMPION)), GatePolicy())
    assert identical.deploy and identical.improvement == 0.0 and identical.low == identical.high == 0.0


def test_against_the_champion_too_few_records_hold_only_a_worse_point_estimate():
    few = {"eval_loss": {"base": [3.0, 3.0, 3.0], "tuned": [2.5, 2.6, 2.4], "champion": [2.0, 2.1, 2.0]}}
    d = decide_against_champion(few, GatePolicy())
    assert d.verdict == "undecided" and not d.deploy and "than the version in service" in d.reason
    few["eval_loss"]["champion"] = [2.9, 2.9, 2.9]
    assert decide_against_champion(few, GatePolicy()).deploy


def test_a_report_without_champion_scores_cannot_be_decided_against_one():
    with pytest.raises(GateError, match="no per-record eval_loss scores of the version in service"):
        decide_against_champion(scores(BASE, BASE), GatePolicy())


# ------------------------------------------------------------------ the gate on a report in RUNS_CONTAINER


def report_document(run_id: str, base: list, tuned: list, champion: list | None = None,
                    champion_run: str = "") -> dict:
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    metric = {"eval_loss": {"base": mean(base), "tuned": mean([t for t in tuned if t is not None]),
                            "records": len(base), "higher_is_better": False}}
    paired = {"base": base, "tuned": tuned}
    document = {"version": 1, "run_id": run_id, "base_model": "b", "tuned_model": "t", "records": len(base),
                "sampled": 1, "tokens": 123, "device": "cpu", "seconds": 1.5,
                "limits": {"max_records": 500, "samples": 50, "max_new_tokens": 128, "max_length": 0},
                "metrics": metric, "per_record": {"eval_loss": paired},
                "samples": [{"prompt": "p", "reference": "r", "base": "b", "tuned": "t"}]}
    if champion is not None:
        paired["champion"] = champion
        metric["eval_loss"]["champion"] = mean(champion)
        document["champion"] = {"model": "/mnt/champion", "run_id": champion_run, "model_id": "azureml:line:1"}
        document["samples"][0]["champion"] = "c"
    return document


@pytest.fixture
def gate_svc(settings):
    from shared.bootstrap import bootstrap
    from shared.run_store import InMemoryRunStore
    from tests.fakes import FakeMLBackend

    svc = bootstrap(settings.replace(eval_gate="enforce"), ml=FakeMLBackend(), runs=InMemoryRunStore())
    svc.blobs.container(settings.runs_container)  # created on first use
    return svc


def _run(run_id: str, **overrides):
    from shared.runs import new_run, utcnow

    return new_run(run_id, utcnow(), overrides=overrides)


def test_the_gate_decides_on_the_report_the_evaluation_wrote(gate_svc):
    from shared.evaluations import gate_run, report_path_for

    run = _run("gate-0123456789ab")
    tuned = [b - 1.0 for b in BASE]
    gate_svc.blobs.write_json(gate_svc.settings.runs_container, report_path_for(run.run_id),
                              report_document(run.run_id, BASE, tuned))
    decision = gate_run(gate_svc, run)
    assert decision["verdict"] == "better" and decision["deploy"] and decision["metric"] == "eval_loss"
    assert decision["report_path"] == "gate-0123456789ab/evaluation.json" and decision["tokens"] == 123
    assert decision["metrics"]["eval_loss"]["improvement"] == pytest.approx(1.0)
    # The upload's override decides under `report`: the same worse numbers deploy, and say why.
    worse = _run("gate-worse0123456", eval_gate="report")
    gate_svc.blobs.write_json(gate_svc.settings.runs_container, report_path_for(worse.run_id),
                              report_document(worse.run_id, BASE, [b + 1.0 for b in BASE]))
    reported = gate_run(gate_svc, worse)
    assert reported["verdict"] == "worse" and reported["deploy"] and reported["gate"] == "report"


def test_a_missing_or_malformed_report_is_a_permanent_error_naming_it(gate_svc):
    from shared.evaluations import EvaluationUnusable, gate_run, report_path_for

    run = _run("gate-missing01234")
    with pytest.raises(EvaluationUnusable, match="wrote no report at gate-missing01234/evaluation.json"):
        gate_run(gate_svc, run)
    document = report_document(run.run_id, BASE, BASE)
    del document["per_record"]
    gate_svc.blobs.write_json(gate_svc.settings.runs_container, report_path_for(run.run_id), document)
    with pytest.raises(EvaluationUnusable, match="is not a report: per_record"):
        gate_run(gate_svc, run)
    chrf = _run("gate-chrf0123456", eval_metric="chrf")
    gate_svc.blobs.write_json(gate_svc.settings.runs_container, report_path_for(chrf.run_id),
                              report_document(chrf.run_id, BASE, BASE))
    with pytest.raises(EvaluationUnusable, match="no per-record chrf scores"):
        gate_run(gate_svc, chrf)
