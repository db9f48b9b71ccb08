"""`chatft demo`: the whole flow on this machine — upload, validate, train, register, deploy, score.

It starts the local host (Azurite, the local ML workspace), uploads the bundled sample dataset, follows the run
with a live progress line, scores once through the HTTP proxy with the notebook's request, and stops what it
started (`--keep` leaves the host serving until Ctrl-C). `--json` makes the last line a JSON summary.

SIGTERM (what a process manager sends) is handled like Ctrl-C: the host, the model servers and an Azurite the host
started are stopped and the summary is printed, whether the signal comes during the run or while `--keep` serves.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

# The notebook's scoring parameters (seed-workflow step 9).
SCORING_PARAMETERS = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}
DONE = ("Deployed", "Held", "Rejected", "Failed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from chatft_local.sample_data import SAMPLE_FILE

    parser.add_argument("--data", type=Path, default=SAMPLE_FILE, help="training JSONL (default: the bundled sample)")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="per-upload override")
    parser.add_argument("--keep", action="store_true", help="leave the host running after the demo (Ctrl-C stops)")
    parser.add_argument("--json", action="store_true", help="end with a JSON summary line")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run (default 900)")
    parser.add_argument("--port", type=int, default=None, help="host port (default CHATFT_HOST_PORT)")


def stage_seconds(run) -> dict[str, float]:
    """Seconds spent in each state the run passed through, from its history."""
    from shared.runs import parse_iso

    out: dict[str, float] = {}
    for here, nxt in zip(run.history, run.history[1:]):
        out[here.state.value] = round((parse_iso(nxt.at) - parse_iso(here.at)).total_seconds(), 2)
    return out


class Progress:
    """One status line, rewritten in place on a terminal, printed on change otherwise."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def show(self, text: str) -> None:
        if text == self.last:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last = text

    def done(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
        self.last = ""


def follow(svc, run_id: str, timeout: float, progress: Progress, started: float):
    """Poll the run until it is Deployed, Rejected or Failed (or the timeout passes); show state and training."""
    deadline = time.monotonic() + timeout
    run = None
    while time.monotonic() < deadline:
        run = svc.runs.find(run_id)
        state = run.state.value if run else "waiting for ingest"
        line = f"[{time.monotonic() - started:6.1f}s] run {run_id}: {state}"
        if run and run.state.value in ("Submitted", "Training") and run.job_name:
            try:
                job = svc.ml.get_job(run.job_name)
                m = job.metrics or {}
                if "step" in m:
                    line += f" | step {m['step']}/{m.get('total_steps', '?')}"
                if "loss" in m:
                    line += f" loss {float(m['loss']):.3f}"
            except Exception:  # progress is decoration: never let it stop the demo
                pass
        progress.show(line)
        if run and run.state.value in DONE:
            break
        time.sleep(0.5)
    progress.done()
    return run


def score_once(base_url: str, key: str, messages: list[dict]) -> tuple[int, object]:
    """POST the notebook's scoring request through the app's proxy; returns (status, parsed reply)."""
    import urllib.error
    import urllib.request

    body = {"input_data": {"input_string": messages, "parameters": SCORING_PARAMETERS}, "params": {}}
    request = urllib.request.Request(f"{base_url}/api/score", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "x-functions-key": key})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def first_user_turns(path: Path) -> list[dict]:
    """The opening of one conversation of the data (system and first user message), to score."""
    with path.open("rb") as f:
        for line in f:
            try:
                messages = json.loads(line)["messages"]
            except (ValueError, KeyError, TypeError):
                continue
            head = []
            for m in messages:
                head.append({"role": m["role"], "content": m["content"]})
                if m["role"] == "user":
                    return head
    return [{"role": "user", "content": "What is Azure Machine Learning?"}]


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C would raise KeyboardInterrupt."""


def _on_sigterm(signum, frame) -> None:
    # One-shot: a second SIGTERM while stopping must not cut the stopping short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted()


def _stop_host(host) -> None:
    """Stop the host, also when the signal came while it was still starting: let it finish starting first, so what
    it started (Azurite, model servers) is known and stopped."""
    thread = getattr(host, "_thread", None)
    if thread is not None and thread.is_alive():
        host._ready.wait(120)
    host.stop()


def main(args: argparse.Namespace) -> int:
    handles = threading.current_thread() is threading.main_thread()  # signal handlers can be set there only
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if handles else None
    try:
        return _main(args)
    except Interrupted:  # came before the demo started anything
        if args.json:
            print(json.dumps({"run_id": None, "state": None, "interrupted": "SIGTERM"}))
        return 128 + int(signal.SIGTERM)
    finally:
        if handles:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    from chatft_local.host import LocalHost
    from chatft_local.uploads import upload_training_file
    from shared.bootstrap import services
    from shared.overrides import OverrideError, parse_overrides

    if not args.data.is_file():
        print(f"chatft demo: {args.data} is not a readable file")
        return 2
    metadata = dict(item.split("=", 1) for item in args.meta if "=" in item)
    try:
        parse_overrides(metadata)
    except OverrideError as exc:
        print("chatft demo: " + "; ".join(p["message"] for p in exc.problems))
        return 2

    # The demo speaks for itself: library progress bars and the host's log lines would drown its progress line.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    host = LocalHost(port=args.port)
    summary: dict = {"run_id": None, "state": None}
    try:
        print("chatft demo: starting the local host (Azurite, local ML workspace)...", flush=True)
        host.start()
        print(f"chatft demo: host ready at {host.base_url} ({time.monotonic() - started:.1f}s); key: `chatft key`",
              flush=True)
        svc = services()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        name, run_id = upload_training_file(svc.settings, args.data, metadata, blob_name=f"demo-{stamp}.jsonl")
        print(f"chatft demo: uploaded {args.data.name} as {svc.settings.training_container}/{name}; run {run_id}",
              flush=True)
        run = follow(svc, run_id, args.timeout, Progress(), started)
        summary.update(run_id=run_id, state=run.state.value if run else None,
                       stage_seconds=stage_seconds(run) if run else {})
        if run is not None and run.evaluation:
            from chatft_local.commands.runs import describe_evaluation

            summary["evaluation"] = run.evaluation
            print("chatft demo: the fine-tune against its base model on the test split (the quality gate):")
            print("\n".join(describe_evaluation(run)))
        if run is None or run.state.value != "Deployed":
            reason = (run.evaluation.get("reason") if run and run.state.value == "Held" else
                      run.failure.reason if run and run.failure else
                      run.history[-1].detail if run else "the upload was never ingested")
            print(f"chatft demo: run ended {summary['state'] or 'nowhere'}: {reason}")
            summary["reason"] = reason
            return 1
        messages = first_user_turns(args.data)
        status, reply = score_once(host.base_url, host.function_key, messages)
        summary.update(score_status=status, score_reply=reply, model=run.model_name, endpoint=run.endpoint_name,
                       metrics=run.metrics)
        print(f"chatft demo: asked {messages[-1]['content']!r}")
        print(f"chatft demo: POST /api/score -> {status}: {json.dumps(reply)[:500]}")
        print("chatft demo: seconds per stage: " +
              ", ".join(f"{k} {v:.1f}" for k, v in summary["stage_seconds"].items()))
        if args.keep:
            print(f"chatft demo: host left running at {host.base_url} (Ctrl-C or SIGTERM stops it)", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt as stop:  # the way out of --keep: the demo itself went well
                summary["stopped_by"] = "SIGTERM" if isinstance(stop, Interrupted) else "SIGINT"
        return 0 if status == 200 else 1
    except KeyboardInterrupt as stop:
        name = "SIGTERM" if isinstance(stop, Interrupted) else "SIGINT"
        print(f"\nchatft demo: {name}: stopping what the demo started", flush=True)
        summary["interrupted"] = name
        return 128 + int(signal.SIGTERM if isinstance(stop, Interrupted) else signal.SIGINT)
    finally:
        _stop_host(host)
        summary["total_seconds"] = round(time.monotonic() - started, 1)
        if args.json:
            print(json.dumps(summary, default=str))
