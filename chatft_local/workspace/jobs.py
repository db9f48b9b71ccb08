"""Fine-tuning jobs of the local workspace: one detached process each, with its state in files, so a job neither
blocks the host nor dies with it.

    <state>/workspace/jobs/<job_name>/
        job.json      the spec, written once by `submit`
        status.json   status (Queued, Running, Completed, Failed, Canceled), error, pid, submitted_at, started_at,
                      ended_at, metrics, progress {step, total_steps, loss, epoch}; replaced atomically
        log.txt       the job process's output
        outputs/mlflow_model_folder/   the fine-tuned MLflow model

The process is `python -m chatft_local.workspace.jobs run <job_dir>`. It posts the run's status changes as
Azure ML Event Grid events (see `events.py`) to the URL in the spec's `events_url_file` when that file holds one
(read again before each attempt, so a host that restarts on another port is found), else to `events_url`.
Events its receiver has not taken a few seconds after the job ends are handed to a small delivery process (the
same pid, `... jobs deliver <job_dir>`, events in `events.pending.json`), which keeps trying for the rest of
their 24 hours without the training libraries' memory. A finished status is final: a late writer cannot turn
Canceled back into Running.

A workspace may run at most `max_running` jobs at once (the spec's key; LOCAL_MAX_JOBS), as an Azure ML compute
cluster runs at most `max_instances` nodes: a job beyond it waits Queued, its process holding nothing heavy yet,
until it takes one of the slots `<state>/workspace/job-slots/<n>.lock` (an exclusive flock, let go when the
process ends, however it ends, or becomes the delivery process: no slot outlives its job).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .events import EventOutbox, delivery_window_left, post_event, run_events
from .files import file_lock, write_json

log = logging.getLogger("chatft.jobs")

QUEUED, RUNNING, COMPLETED, FAILED, CANCELED = "Queued", "Running", "Completed", "Failed", "Canceled"
FINAL = frozenset({COMPLETED, FAILED, CANCELED})
MODEL_FOLDER = "mlflow_model_folder"
# A job is a fine-tuning job, or (`kind` "evaluation") an evaluation of one (`evaluation/`).
REQUIRED_SPEC = {"training": ("job_name", "base_model", "train_file"),
                 "evaluation": ("job_name", "base_model", "tuned_model", "test_file", "report")}
PATH_KEYS = ("base_model", "tuned_model", "champion_model", "train_file", "test_file", "events_url_file")
EVALUATION = "evaluation"
# A queued job whose process was never recorded this long after submission was lost (the host died mid-submit).
UNSTARTED_GRACE_SECONDS = 60.0
PROGRESS_WRITE_SECONDS = 1.0
# How long a finished job waits for its last events before handing them to the delivery process.
HANDOFF_SECONDS = 10.0
SLOT_POLL_SECONDS = 0.5
SLOTS = "job-slots"  # beside jobs/, so listing jobs/ lists only jobs
PENDING_EVENTS = "events.pending.json"
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Job processes this process started, kept so that finished ones are reaped (no zombies) when statuses are read.
_children: dict[int, subprocess.Popen] = {}


class JobNotFound(KeyError):
    """No job of that name in the workspace."""

    def __str__(self) -> str:
        return f"job {self.args[0]} not found" if self.args else "job not found"


class JobCanceled(Exception):
    """Raised in the job process when it is asked to stop (SIGTERM)."""


def jobs_root(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / "workspace" / "jobs"


def job_dir(state_dir: str | os.PathLike, job_name: str) -> Path:
    """The job's directory; a name that is not a plain file name is a ValueError (it becomes a path)."""
    if not isinstance(job_name, str) or not _JOB_NAME.fullmatch(job_name):
        raise ValueError(f"job name {str(job_name)[:80]!r} is not valid: letters, digits, '.', '_' and '-' only")
    return jobs_root(state_dir) / job_name


def job_exists(state_dir: str | os.PathLike, job_name: str) -> bool:
    return (job_dir(state_dir, job_name) / "job.json").is_file()


def model_dir(state_dir: str | os.PathLike, job_name: str) -> Path:
    """Where a completed job's MLflow model is (the pipeline's `mlflow_model_folder` output)."""
    return job_dir(state_dir, job_name) / "outputs" / MODEL_FOLDER


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ status file


def _write_once(path: Path, payload: dict[str, Any], mode: int = 0o644) -> bool:
    """Create `path` with the whole payload, unless it exists (then False). Atomic and exclusive: a temporary
    file is hard-linked into place, which fails when the name is taken."""
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as f:
        f.write(json.dumps(payload, indent=1))
    try:
        os.link(scratch, path)
        return True
    except FileExistsError:
        return False
    finally:
        scratch.unlink()




def update_status(directory: Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into the job's status file (across processes, one writer at a time) and return the
    result. A final status (Completed, Failed, Canceled) is never changed again."""
    path = directory / "status.json"
    with file_lock(directory / "status.lock"):
        current = json.loads(path.read_text())
        if current["status"] in FINAL:
            return current
        current.update(changes)
        write_json(path, current)
        return current


# ------------------------------------------------------------------------------------------ host side


def submit(state_dir: str | os.PathLike, spec: dict[str, Any]) -> str:
    """Start the job in a detached process and return its name; a job that already exists is left alone (no
    second process). `spec`: job_name, run_id, experiment_name, base_model (a model directory), train_file,
    test_file (local paths, "" for none), params, events_url and events_url_file ("" for none)."""
    missing = [key for key in REQUIRED_SPEC[spec.get("kind") or "training"] if not spec.get(key)]
    if missing:
        raise ValueError(f"job spec lacks {', '.join(missing)}")
    name = spec["job_name"]
    directory = job_dir(state_dir, name)
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()  # the process outlives the caller's working directory
    spec = {**spec, **{key: str(Path(spec[key]).resolve()) for key in PATH_KEYS if spec.get(key)}}
    # Status first, then the spec: job.json is what makes the job exist, and whoever creates it starts the
    # process, so two submits at once start one.
    _write_once(directory / "status.json", {"status": QUEUED, "error": "", "pid": None, "submitted_at": _now(),
                                            "started_at": None, "ended_at": None, "metrics": {}, "progress": {}})
    # Owner-only: the events URL carries the webhook's key.
    if not _write_once(directory / "job.json", spec, mode=0o600):
        return name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    with open(directory / "log.txt", "ab") as output:
        # A new session: the job outlives the host, and cancel can signal its whole process group.
        process = subprocess.Popen([sys.executable, "-m", "chatft_local.workspace.jobs", "run", str(directory)],
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True, env=env, cwd=str(directory))
    _children[process.pid] = process
    update_status(directory, pid=process.pid)
    return name


def read_status(state_dir: str | os.PathLike, job_name: str) -> dict[str, Any]:
    """The job's status. A Queued or Running job whose process is gone is Failed ("training process died"),
    and is recorded so. JobNotFound for an unknown job."""
    directory = job_dir(state_dir, job_name)
    if not job_exists(state_dir, job_name):
        raise JobNotFound(job_name)
    _reap()
    status = json.loads((directory / "status.json").read_text())
    if status["status"] not in FINAL and not _process_alive(directory, status):
        status = update_status(directory, status=FAILED, error="training process died", ended_at=_now())
    return status


def cancel(state_dir: str | os.PathLike, job_name: str) -> None:
    """Mark the job Canceled and stop its process group (SIGTERM); nothing happens to a finished job."""
    directory = job_dir(state_dir, job_name)
    if not job_exists(state_dir, job_name):
        raise JobNotFound(job_name)
    before = json.loads((directory / "status.json").read_text())
    if before["status"] in FINAL:
        return
    _reap()
    alive = _process_alive(directory, before)
    after = update_status(directory, status=CANCELED, error="canceled", ended_at=_now())
    if after["status"] == CANCELED and alive and after.get("pid"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(after["pid"], signal.SIGTERM)


def _reap() -> None:
    """Collect the exit status of job processes started here that have ended (else they linger as zombies)."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            del _children[pid]


def _process_alive(directory: Path, status: dict[str, Any]) -> bool:
    """Whether the job's process runs. Where /proc exists, the pid must also still be this job's process (not a
    zombie, not a reused pid); a just-submitted job's process may not have started its program yet."""
    submitted = datetime.fromisoformat(status.get("submitted_at") or _now())
    young = status["status"] == QUEUED and \
        (datetime.now(timezone.utc) - submitted).total_seconds() < UNSTARTED_GRACE_SECONDS
    pid = status.get("pid")
    if not pid:
        return young
    if pid in _children:
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process under a reused pid
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs (macOS): trust the signal check
    if not command:
        return False  # a zombie
    return str(directory.resolve()).encode() in command.split(b"\0") or young


# ------------------------------------------------------------------------------------------ job process


def run(directory: Path) -> int:
    """The job process: train, write status and model, post events. Exit status 0 when Completed."""
    def stop(signum, frame):
        raise JobCanceled()

    signal.signal(signal.SIGTERM, stop)
    spec = json.loads((directory / "job.json").read_text())
    name, experiment = spec["job_name"], spec.get("experiment_name") or "chatft"
    target = events_target(spec)
    outbox = EventOutbox(target) if target else None
    result: dict[str, Any] = {}
    try:
        slot = _take_slot(directory, int(spec.get("max_running") or 0))  # noqa: F841 (held for the process's life)
        started = update_status(directory, status=RUNNING, pid=os.getpid(), started_at=_now())
        if started["status"] == RUNNING:  # else it was canceled before it began
            if outbox:
                outbox.publish(run_events(name, experiment, RUNNING))
            metrics = (_evaluate(directory, spec) if spec.get("kind") == EVALUATION
                       else _train(directory, spec, experiment))
            result = {"status": COMPLETED, "metrics": metrics,
                      "progress": {"step": metrics.get("steps"), "total_steps": metrics.get("steps"),
                                   "loss": metrics.get("last_step_loss")}}
    except JobCanceled:
        log.info("job %s canceled", name)
        result = {"status": CANCELED, "error": "canceled"}
    except BaseException as error:  # the job's one-line error; the traceback goes to log.txt
        log.exception("job %s failed", name)
        result = {"status": FAILED, "error": _one_line(error)}
    finally:
        # Reporting the outcome is not interrupted: a cancel arriving now finds the job finished.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        final = update_status(directory, ended_at=_now(), **result)
        shutil.rmtree(directory / "work", ignore_errors=True)
        undelivered = []
        if outbox:
            outbox.publish(run_events(name, experiment, final["status"]))
            undelivered = outbox.close(timeout=HANDOFF_SECONDS)
        if undelivered:
            _hand_off(directory, undelivered)
    return 0 if final["status"] == COMPLETED else 1


def _take_slot(directory: Path, max_running: int) -> Any:
    """Wait Queued until one of the workspace's `max_running` job slots is free and return it (an open file
    holding its flock); None when there is no limit (0). SIGTERM (cancel) ends the wait as it ends training."""
    if max_running <= 0:
        return None
    slots = directory.parent.parent / SLOTS
    slots.mkdir(exist_ok=True)
    while True:
        for n in range(max_running):
            handle = open(slots / f"{n}.lock", "a")  # close-on-exec (PEP 446): the delivery process holds no slot
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                handle.close()
        time.sleep(SLOT_POLL_SECONDS)


def _hand_off(directory: Path, events: list[dict[str, Any]]) -> None:
    """Become the delivery process (exec: same pid, the training libraries' memory released)."""
    write_json(directory / PENDING_EVENTS, {"events": events})
    log.info("handing %d undelivered event(s) to the delivery process", len(events))
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an ignored signal would stay ignored across exec
    os.execv(sys.executable, [sys.executable, "-m", "chatft_local.workspace.jobs", "deliver", str(directory)])


def deliver(directory: Path) -> int:
    """The delivery process: post the job's pending events, each until delivered or out of its 24 hours."""
    pending = directory / PENDING_EVENTS
    events = json.loads(pending.read_text())["events"]
    target = events_target(json.loads((directory / "job.json").read_text()))
    delivered = all([post_event(target, event, give_up_after=delivery_window_left(event)) for event in events])
    pending.unlink()
    return 0 if delivered else 1


def events_target(spec: dict[str, Any]) -> Callable[[], str] | None:
    """Where the job's events go, asked before each delivery attempt; None when the spec names no receiver."""
    url, url_file = spec.get("events_url") or "", spec.get("events_url_file") or ""
    if not url and not url_file:
        return None

    def current() -> str:
        try:
            published = Path(url_file).read_text().strip() if url_file else ""
        except OSError:
            published = ""
        return published or url

    return current


def _train(directory: Path, spec: dict[str, Any], experiment: str) -> dict[str, Any]:
    from . import trainer

    workspace = directory.parent.parent
    last_write = 0.0

    def progress(update: dict[str, Any]) -> None:
        nonlocal last_write
        if time.monotonic() - last_write >= PROGRESS_WRITE_SECONDS or update["step"] == update["total_steps"]:
            update_status(directory, progress=update)
            last_write = time.monotonic()

    run = trainer.TrainingRun(
        base_model=spec["base_model"], train_file=spec["train_file"], test_file=spec.get("test_file") or "",
        model_dir=str(directory / "outputs" / MODEL_FOLDER), tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}",
        experiment_name=experiment, run_name=spec["job_name"], work_dir=str(directory / "work"),
        tags={"chatft.run_id": str(spec.get("run_id") or ""), "chatft.base_model": str(spec.get("base_model_name")
                                                                                       or spec["base_model"])})
    return trainer.fine_tune(run, spec.get("params") or {}, on_progress=progress)


def _evaluate(directory: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The evaluation job: the same module the Azure ML command job runs, its report written to the job's
    outputs and then where the app reads it (RUNS_CONTAINER, as the Azure job's datastore output does).
    Returns the headline numbers (the job's metrics)."""
    from azure.storage.blob import BlobClient

    from evaluation.__main__ import write_report
    from evaluation.scoring import EvaluationLimits, evaluate

    limits = EvaluationLimits(**(spec.get("limits") or {}))
    report = evaluate(spec["base_model"], spec["tuned_model"], spec["test_file"], limits,
                      run_id=str(spec.get("run_id") or ""), champion_model=spec.get("champion_model") or None,
                      champion=spec.get("champion"))
    path = write_report(report, directory / "outputs" / "evaluation.json")
    target = spec["report"]
    blob = BlobClient.from_connection_string(target["connection"], target["container"], target["blob"])
    blob.upload_blob(path.read_bytes(), overwrite=True)
    written = json.loads(path.read_text())
    return {f"{which}_{name}": summary[which] for name, summary in written["metrics"].items()
            for which in ("base", "tuned", "champion") if which in summary} | {"records": written["records"], "tokens": written["tokens"],
                                                 "seconds": written["seconds"]}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("run", "deliver"):
        print("usage: python -m chatft_local.workspace.jobs run|deliver <job_dir>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return (run if args[0] == "run" else deliver)(Path(args[1]).resolve())


if __name__ == "__main__":
    sys.exit(main())
