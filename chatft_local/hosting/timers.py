"""Timer triggers on six-field NCRONTAB schedules (UTC), with `run_on_startup`.

Runs of one timer never overlap: an occurrence that passes while the function still runs is skipped, as a
singleton timer does. `past_due` is true when the run starts more than a second after its scheduled time.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from azure.functions.timer import TimerRequest

from chatft_local import ncrontab

from .indexing import FunctionSpec, IndexingError
from .invoker import Invoker

log = logging.getLogger("chatft.host")

PAST_DUE_SECONDS = 1.0


class TimerListener:
    """Serves one timer-triggered function on its own thread."""

    def __init__(self, spec: FunctionSpec, invoker: Invoker):
        self.spec = spec
        try:
            self.schedule = ncrontab.parse(spec.trigger["schedule"])
        except ncrontab.ScheduleError as e:
            raise IndexingError(f"function {spec.name}: {e}") from None
        self.run_on_startup = bool(spec.trigger.get("runOnStartup"))
        self._invoker = invoker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"timer-{spec.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        if self.run_on_startup:
            self._fire(past_due=False, trigger_id="startup")
        while True:
            due = self.schedule.next_after(datetime.now(timezone.utc))  # runs never start early, so never twice
            # Event.wait keeps monotonic time; loop until the wall clock, which the schedule is in, reaches `due`.
            while (remaining := (due - datetime.now(timezone.utc)).total_seconds()) > 0:
                if self._stop.wait(remaining):
                    return
            self._fire(past_due=-remaining > PAST_DUE_SECONDS, trigger_id=due.isoformat(timespec="seconds"))

    def _fire(self, past_due: bool, trigger_id: str) -> None:
        try:
            self._invoker.call(self.spec, TimerRequest(past_due=past_due), trigger_id)
        except Exception:  # logged by the invoker; the timer keeps its schedule
            pass
