"""Timer trigger: the nightly cleanup of idle endpoints this app owns (`%CLEANUP_SCHEDULE%`)."""

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(schedule="%CLEANUP_SCHEDULE%", arg_name="timer", run_on_startup=False)
def cleanup(timer: func.TimerRequest) -> None:
    from shared.bootstrap import services
    from shared.cleanup import run_cleanup

    if timer.past_due:
        log.info("cleanup timer is past due; running now")
    run_cleanup(services())
