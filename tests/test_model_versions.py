"""Model versions through the app's own flow (service level: real Azurite, the cloud fake at the Azure boundary):
integers numbered per model name, and a registration repeated after a crash or a duplicated event never makes a
second version."""

from __future__ import annotations

from shared.ml.training_params import registered_model_name
from shared.orchestration import RUN_COMPLETED, handle_job_event, submit_run
from shared.runs import State, job_name_for
from tests.test_orchestration import clock, event, ml, queued_run, settings, svc  # noqa: F401 (fixtures)


def completed(svc, ml, run_id):
    queued_run(svc, run_id)
    submit_run(svc, run_id)
    job = job_name_for(run_id)
    ml.complete_job(job)
    return job


def test_versions_are_integers_numbered_per_model_name(svc, ml):
    first = completed(svc, ml, "data-0123456789ab")  # the same upload name twice: one model name, two versions
    second = completed(svc, ml, "data-ba9876543210")
    one = handle_job_event(svc, event(first, "Completed"))
    two = handle_job_event(svc, event(second, "Completed", RUN_COMPLETED))
    assert one.model_name == two.model_name == registered_model_name(svc.settings.base_model, "data")
    assert (one.model_version, two.model_version) == ("1", "2")
    assert one.state == two.state == State.DEPLOYING


def test_a_registration_repeated_after_a_crash_finds_the_first_version(svc, ml):
    job = completed(svc, ml, "data-0123456789ab")
    # An earlier attempt registered the model and died before it could record that on the run.
    earlier = ml.register_model(job, registered_model_name(svc.settings.base_model, "data"))
    run = handle_job_event(svc, event(job, "Completed"))
    handle_job_event(svc, event(job, "Completed", RUN_COMPLETED))  # and a duplicated event on top
    assert (run.model_name, run.model_version, run.model_id) == (earlier.name, earlier.version, earlier.id)
    assert ml.created["model"] == 1
