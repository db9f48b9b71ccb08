"""A model line end to end, on this machine: the local host on Azurite, the local workspace really fine-tuning and
serving. Three uploads to `support-bot/` give one endpoint (`ln-support-bot`) and three versions while a caller
keeps calling the line by name: version 2 rolls out through a healthy canary, version 3 is broken (its deployment
answers 500: `LOCAL_FAULTS=score@v03=error:...`) and is rolled back automatically, then `chatft rollback` takes the
line back to version 1. The caller never sees a failure; the ledger is printed.

Lean: 24 records, one epoch, no evaluation (EVAL_GATE=off: the gate has its own end-to-end test), a 20-second
canary at 50% judged on at least 4 requests. Waits on states (polling), never on sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import requests

from chatft_local.host import LocalHost
from chatft_local.uploads import upload_training_file
from shared.config import Settings
from shared.run_store import RunStore
from shared.runs import State
from tests.harness_local import poll
from tests.test_end_to_end import names_env, wait_for_run, write_sample

from .conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

LINE = "support-bot"
ROLLOUT = {"EVAL_GATE": "off", "ROLLOUT_CANARY_PERCENT": "50", "ROLLOUT_CANARY_MINUTES": "0.33",
           "ROLLOUT_MIN_REQUESTS": "4", "ROLLOUT_MAX_ERROR_RATE": "0.25",
           "LOCAL_FAULTS": "score@v03=error:1000000"}
REQUEST = {"input_data": {"input_string": [{"role": "user", "content": "How do I reset my password?"}],
                          "parameters": {"max_new_tokens": 8, "do_sample": False}}, "params": {}}


class Caller:
    """A caller's loop of requests to the line by name, in a thread; every answer is kept in the ledger."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        self.answers: list[tuple[int, str, str]] = []  # (status, run that answered, error text)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    r = session.post(f"{self.url}/api/score/{LINE}", json=REQUEST, timeout=120,
                                     headers={"x-functions-key": self.key})
                    self.answers.append((r.status_code, r.headers.get("x-chatft-run", ""),
                                         "" if r.ok else r.text[:200]))
                except requests.RequestException as exc:
                    self.answers.append((0, "", type(exc).__name__))

    def start(self) -> "Caller":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(180)

    def served_by(self, run_id: str) -> int:
        return sum(1 for status, run, _ in self.answers if status == 200 and run == run_id)


def chatft(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatft_local", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_three_uploads_to_a_line_roll_out_roll_back_and_never_fail_a_caller(azurite, tmp_path):
    env = {**names_env(tmp_path / "state"), **ROLLOUT}
    host = LocalHost(port=0, env=env).start()
    caller = None
    try:
        settings = Settings.from_env({**os.environ, **env})
        store = RunStore(settings.storage_connection, settings.runs_table)
        done = (State.DEPLOYED, State.FAILED, State.REJECTED, State.HELD)

        def upload(week: int) -> str:
            data = write_sample(tmp_path / f"week{week}.jsonl", count=24, seed=week)
            return upload_training_file(settings, data, {"epochs": "1", "test_fraction": "0.1"},
                                        blob_name=f"{LINE}/week{week}.jsonl")[1]

        first = wait_for_run(store, upload(1), done)
        assert first.state == State.DEPLOYED, (first.failure, first.history)
        assert (first.endpoint_name, first.deployment_name, first.model_version) == ("ln-support-bot", "v01", "1")
        caller = Caller(host.base_url, host.function_key).start()
        assert poll(lambda: caller.served_by(first.run_id) >= 3, timeout=120)

        second = wait_for_run(store, upload(2), done)
        assert second.state == State.DEPLOYED, (second.failure, second.history)
        assert second.deployment_name == "v02" and second.endpoint_name == first.endpoint_name
        traffic = [t.detail for t in second.history if t.kind == "traffic"]
        assert traffic and traffic[0].startswith("canary: traffic v01 50%, v02 50%"), second.history
        assert "canary healthy" in second.history[-1].detail
        assert store.get(first.run_id).standby_until, "version 1 is kept for a rollback"

        third = wait_for_run(store, upload(3), done)
        assert third.state == State.FAILED and third.failure.stage == "rollout", (third.failure, third.history)
        assert "canary of v03 unhealthy" in third.failure.reason and "traffic back to v02" in third.failure.reason
        served_before = caller.served_by(second.run_id)
        assert poll(lambda: caller.served_by(second.run_id) >= served_before + 3, timeout=120)  # the line still serves v02

        rolled = chatft(env, "rollback", LINE)
        assert rolled.returncode == 0, rolled.stderr
        assert "v01" in rolled.stdout
        assert poll(lambda: caller.answers[-1][1] == first.run_id and caller.served_by(first.run_id) >= 6, timeout=120)
        caller.stop()

        ledger = Counter()
        for status, run, _ in caller.answers:
            ledger[{first.run_id: "v1", second.run_id: "v2", third.run_id: "v3"}.get(run, run or "none")
                   if status == 200 else f"failed {status}"] += 1
        failures = [a for a in caller.answers if a[0] != 200]
        print(f"\nledger: {len(caller.answers)} requests to model {LINE!r}, {len(failures)} failures, "
              f"answered per version: {dict(sorted(ledger.items()))}")
        print(f"v2 canary: {second.rollout.get('verdict')}; v3 canary: {third.rollout.get('verdict')}")
        assert not failures, failures[:5]
        assert ledger["v1"] and ledger["v2"]
        assert third.rollout["verdict"]["errors"] >= 2

        view = chatft(env, "lines", LINE, "--json")
        assert view.returncode == 0, view.stderr
        line = json.loads(view.stdout)
        assert line["endpoint"] == "ln-support-bot" and line["versions"] == ["1", "2", "3"]
        assert [(d["name"], d["traffic"]) for d in line["deployments"]] == [("v01", 100)]
        assert store.get(second.run_id).state == State.RETIRED
        endpoints = [e for e in chatft_endpoints(env) if e.startswith("ln-")]
        assert endpoints == ["ln-support-bot"], "three versions, one endpoint"

        # Two days on, nobody has called the line: the idle cleanup deletes its endpoint with its deployments and
        # retires the run it served; `--dry-run` first says so and deletes nothing.
        later = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        dry = chatft(env, "cleanup", "--dry-run", "--as-of", later, "--json")
        assert dry.returncode == 0, dry.stderr
        assert "ln-support-bot" in [d["endpoint"] for d in json.loads(dry.stdout)["deleted"]], dry.stdout
        assert "ln-support-bot" in chatft_endpoints(env)
        swept = chatft(env, "cleanup", "--as-of", later, "--json")
        assert swept.returncode == 0, swept.stderr
        assert "ln-support-bot" not in chatft_endpoints(env), swept.stdout
        assert store.get(first.run_id).state == State.RETIRED
    finally:
        if caller is not None:
            caller.stop()
        host.stop()


def chatft_endpoints(env: dict[str, str]) -> list[str]:
    """The endpoints of the local workspace the host used."""
    code = ("from chatft_local.runtime import use_local_workspace; use_local_workspace(); "
            "from shared.bootstrap import make_ml_backend; from shared.config import Settings; "
            "print('\\n'.join(e.name for e in make_ml_backend(Settings.from_env()).list_endpoints()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return sorted(out.stdout.split())
