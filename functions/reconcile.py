"""Timer trigger: drive runs whose events or messages were lost, by the backend's word (`%RECONCILE_SCHEDULE%`)."""

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(schedule="%RECONCILE_SCHEDULE%", arg_name="timer", run_on_startup=False)
def reconcile(timer: func.TimerRequest) -> None:
    from shared.bootstrap import services
    from shared.reconcile import reconcile_runs

    if timer.past_due:
        log.info("reconcile timer is past due; running now")
    reconcile_runs(services())
