"""The quality gate's steps on the step runner, service level: runs and messages in memory, the fake ML backend at the
cloud boundary, the evaluation report in RUNS_CONTAINER on Azurite (where the evaluation job writes it)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from shared.bootstrap import bootstrap
from shared.evaluations import report_path_for
from shared.orchestration import RUN_STATUS_CHANGED, JobEvent, handle_job_event, redeploy, submit_run
from shared.reconcile import reconcile_runs
from shared.run_store import InMemoryRunStore
from shared.runs import State, evaluation_job_name_for, job_name_for, new_run
from tests.fakes import FakeMLBackend, RecordingSender
from tests.test_quality_gate import BASE, report_document


class Clock:
    def __init__(self):
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


@pytest.fixture
def ml():
    return FakeMLBackend()


@pytest.fixture
def svc(settings, ml):
    s = settings.replace(eval_gate="enforce", eval_max_records=200, eval_samples=5, eval_max_new_tokens=32)
    return bootstrap(s, ml=ml, clock=Clock(), messages=RecordingSender(), runs=InMemoryRunStore())


def event(job_name, status):
    return JobEvent.from_event_grid(RUN_STATUS_CHANGED, {"runId": job_name, "runStatus": status,
                                                         "runType": "azureml.PipelineRun"})


def trained(svc, ml, run_id="gate-0123456789ab", line="", **overrides):
    run = new_run(run_id, svc.clock(), line=line).advance(State.VALIDATING, svc.clock())
    run = run.advance(State.QUEUED, svc.clock(), train_path=f"{run_id}/train.jsonl", test_path=f"{run_id}/test.jsonl",
                      overrides=overrides)
    svc.runs.create(run)
    submit_run(svc, run_id)
    ml.complete_job(job_name_for(run_id), metrics={"eval_loss": 1.0})
    return handle_job_event(svc, event(job_name_for(run_id), "Completed"))


def evaluated(svc, ml, run, tuned):
    svc.blobs.write_json(svc.settings.runs_container, report_path_for(run.run_id),
                         report_document(run.run_id, BASE, tuned))
    ml.complete_job(evaluation_job_name_for(run.run_id))
    return handle_job_event(svc, event(evaluation_job_name_for(run.run_id), "Completed"))


def test_a_completed_job_is_evaluated_and_a_better_fine_tune_deployed(svc, ml):
    run = trained(svc, ml)
    assert run.state == State.EVALUATING and run.evaluation_job == "chatft-gate-0123456789ab-eval"
    request = ml.jobs[run.evaluation_job].request
    assert (request.training_job, request.test_path, request.report_path) == (
        "chatft-gate-0123456789ab", "gate-0123456789ab/test.jsonl", "gate-0123456789ab/evaluation.json")
    assert (request.max_records, request.samples, request.max_new_tokens) == (200, 5, 32)
    assert ml.created["model"] == 0  # nothing registered before the gate decides
    # The evaluation job's Running event changes nothing.
    assert handle_job_event(svc, event(run.evaluation_job, "Running")).state == State.EVALUATING
    run = evaluated(svc, ml, run, [b - 1.0 for b in BASE])
    assert run.state == State.DEPLOYING
    assert [t.state for t in run.history][-4:] == [State.TRAINED, State.EVALUATING, State.REGISTERED,
                                                   State.DEPLOYING]
    assert run.evaluation["verdict"] == "better" and run.evaluation["deploy"] and run.evaluation["low"] > 0
    # A duplicate Completed event makes no second model or endpoint.
    handle_job_event(svc, event(run.evaluation_job, "Completed"))
    assert ml.created["model"] == 1 and ml.created["endpoint"] == 1 and ml.created["evaluation"] == 1


def test_a_worse_fine_tune_is_held_without_an_endpoint_until_a_person_deploys_it(svc, ml):
    run = evaluated(svc, ml, trained(svc, ml), [b + 1.0 for b in BASE])
    assert run.state == State.HELD and run.model_name and not run.endpoint_name
    assert ml.created["endpoint"] == 0 and "worse than the base model" in run.history[-1].detail
    run = redeploy(svc, run.run_id)
    assert run.state == State.DEPLOYING and run.deployed_by_choice and "person's choice" in run.history[-1].detail
    assert ml.created["endpoint"] == 1 and run.evaluation["verdict"] == "worse"


def test_the_uploads_report_gate_deploys_a_worse_fine_tune_and_says_so(svc, ml):
    run = evaluated(svc, ml, trained(svc, ml, eval_gate="report"), [b + 1.0 for b in BASE])
    assert run.state == State.DEPLOYING and "EVAL_GATE=report" in run.evaluation["reason"]


def test_gate_off_registers_straight_after_training(svc, ml):
    run = trained(svc, ml, eval_gate="off")
    assert run.state == State.DEPLOYING and not run.evaluation_job and not run.evaluation
    assert State.EVALUATING not in [t.state for t in run.history]


def test_a_failed_evaluation_job_or_a_missing_report_fails_the_run_naming_it(svc, ml):
    run = trained(svc, ml)
    ml.fail_job(run.evaluation_job, "CUDA out of memory")
    run = handle_job_event(svc, event(run.evaluation_job, "Failed"))
    assert run.state == State.FAILED and run.failure.stage == "evaluate" and "CUDA out of memory" in run.failure.reason
    other = trained(svc, ml, run_id="gate-missing01234")
    ml.complete_job(other.evaluation_job)
    other = handle_job_event(svc, event(other.evaluation_job, "Completed"))
    assert other.state == State.FAILED and "wrote no report" in other.failure.reason


def test_the_reconciler_moves_a_stale_evaluating_run_on(svc, ml):
    run = trained(svc, ml)
    svc.blobs.write_json(svc.settings.runs_container, report_path_for(run.run_id),
                         report_document(run.run_id, BASE, [b - 1.0 for b in BASE]))
    ml.complete_job(run.evaluation_job)  # its event is lost
    svc.clock.now += timedelta(minutes=svc.settings.reconcile_after_minutes + 1)
    report = reconcile_runs(svc)
    assert (run.run_id, "Evaluating", "Deploying") in report.moved
    assert svc.runs.get(run.run_id).evaluation["verdict"] == "better"


def test_a_late_completed_event_of_the_training_job_does_not_chase_the_evaluation(svc, ml):
    run = trained(svc, ml)
    sent = len(svc.messages.sent)
    again = handle_job_event(svc, event(job_name_for(run.run_id), "Completed"))  # e.g. RunCompleted after it
    assert again.state == State.EVALUATING and not [t for t in again.history if t.kind == "retry"]
    assert len(svc.messages.sent) == sent


# ------------------------------------------------------------------ champion and challenger (a model line)

LINE = "support-bot"


def in_service(svc, ml, run_id="week1-0123456789ab"):
    """A line's first version, gated against its base model only, then Deployed (the fake's deployment steps are
    not what this is about)."""
    run = trained(svc, ml, run_id=run_id, line=LINE)
    assert ml.jobs[run.evaluation_job].request.champion is None  # a line's first version faces no champion
    run = evaluated(svc, ml, run, [b - 1.0 for b in BASE])
    assert run.state == State.DEPLOYING and "champion" not in run.evaluation
    return svc.runs.update(run.run_id, lambda r: r.advance(State.DEPLOYED, svc.clock()))


def challenged(svc, ml, champion_run, tuned, champion, run_id="week2-0123456789ab"):
    run = trained(svc, ml, run_id=run_id, line=LINE)
    request = ml.jobs[run.evaluation_job].request
    assert request.champion_run_id == champion_run.run_id
    assert (request.champion.name, request.champion.version, request.champion.id) == (
        champion_run.model_name, champion_run.model_version, champion_run.model_id)
    svc.blobs.write_json(svc.settings.runs_container, report_path_for(run.run_id),
                         report_document(run.run_id, BASE, tuned, champion=champion,
                                         champion_run=champion_run.run_id))
    ml.complete_job(run.evaluation_job)
    return handle_job_event(svc, event(run.evaluation_job, "Completed"))


def test_a_new_version_worse_than_the_one_in_service_is_held_with_both_comparisons(svc, ml):
    from shared.protocol import RunView
    from shared.run_views import run_view

    first = in_service(svc, ml)
    champion = [b - 1.0 for b in BASE]
    run = challenged(svc, ml, first, [c + 0.5 for c in champion], champion)  # better than base, worse than v1
    assert run.state == State.HELD and not run.endpoint_name and ml.created["endpoint"] == 1
    e = run.evaluation
    assert e["verdict"] == "better" and not e["deploy"]  # the base comparison passed; the champion's held it
    assert e["champion"]["verdict"] == "worse" and not e["champion"]["deploy"]
    assert e["champion"]["run_id"] == first.run_id and e["champion"]["model_version"] == first.model_version
    assert e["champion"]["improvement"] == pytest.approx(-0.5) and e["champion"]["high"] < 0
    assert e["champion"]["metrics"]["eval_loss"]["champion"] == pytest.approx(sum(champion) / len(champion))
    assert run.history[-1].detail.startswith(f"worse than the version in service (v{first.model_version}, run "
                                             f"{first.run_id})")
    view = RunView.model_validate(run_view(run), strict=False)  # GET /api/runs/{id} shows both
    assert view.evaluation.champion.verdict == "worse" and view.evaluation.verdict == "better"
    # `chatft runs RUN_ID` shows both comparisons; `chatft runs` says both verdicts.
    from chatft_local.commands.runs import describe, gate_column

    shown = "\n".join(describe(run))
    assert f"vs in service v{first.model_version} (run {first.run_id}) worse -> hold" in shown
    assert "in service" in shown and "eval_loss" in shown.split("vs in service", 1)[1]
    assert gate_column(run) == "better/worse"
    # The version in service is untouched, and a person may still deploy the held one.
    assert svc.runs.get(first.run_id).state == State.DEPLOYED
    assert redeploy(svc, run.run_id).state == State.DEPLOYING


def test_a_new_version_better_than_or_as_good_as_the_one_in_service_is_deployed(svc, ml):
    first = in_service(svc, ml)
    champion = [b - 1.0 for b in BASE]
    better = challenged(svc, ml, first, [c - 0.3 for c in champion], champion)
    assert better.state == State.DEPLOYING and better.evaluation["champion"]["verdict"] == "better"
    assert better.evaluation["deploy"] and "than the version in service" in better.evaluation["reason"]
    from tests.test_quality_gate import noisy

    same = challenged(svc, ml, first, [c + d for c, d in zip(champion, noisy(len(champion), 0, 0.5, seed=21))],
                      champion, run_id="week3-0123456789ab")
    assert same.state == State.DEPLOYING and same.evaluation["champion"]["verdict"] == "inconclusive"
    assert same.evaluation["champion"]["deploy"]


def test_a_root_upload_faces_no_champion_even_beside_a_deployed_line(svc, ml):
    in_service(svc, ml)
    root = trained(svc, ml, run_id="rootup-0123456789ab")
    assert ml.jobs[root.evaluation_job].request.champion is None
