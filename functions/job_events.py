"""Event Grid trigger: Azure ML job status changes move runs on (register, deploy, or fail)."""

import azure.functions as func

bp = func.Blueprint()


@bp.event_grid_trigger(arg_name="event")
def job_events(event: func.EventGridEvent) -> None:
    from shared.bootstrap import services
    from shared.orchestration import JobEvent, handle_job_event

    data = event.get_json()
    if isinstance(data, dict):
        handle_job_event(services(), JobEvent.from_event_grid(event.event_type, data))
