"""Load: many uploads at once through the local Functions host, and no run left behind (issue 17, "Load held").

One local host (`chatft_local.host.LocalHost`, in this process) on the shared Azurite (default ports; a table,
queues and containers of this run's own: `tests/test_failure_behaviour.Scenario`), the local ML workspace really
fine-tuning and serving. Uploaded within about ten seconds:
  - VALID (50) valid uploads, each different bytes (a seed of its own), 1 epoch on the stand-in base model;
  - OVERWRITES (5) large valid uploads, each overwritten with other (small, valid) bytes as soon as its run is
    seen Validating: the first version ends Rejected ("superseded") or, when validation won the race, trains
    like any other; the second version trains;
  - DEEP (5) uploads whose line 8 nests 300 or 1000 levels deep (`tests/test_ingest_holes.deep_line`), in
    `prompt_id` or in a key of its own: Rejected naming the line.
The quality gate is off (EVAL_GATE=off: one job per run, the fine-tune), the reconciler runs every 2 s and takes
a run with no progress for 30 s. Once every run is terminal (or the timeout passes) the script waits one more
reconciler window and reads the ledger again, so a late duplicate would still show.

Invariants (the exit status is 1 when any fails, and the ledger says which):
  - every run is Deployed, Rejected or Failed, each Rejected or Failed run with a reason;
  - exactly one fine-tuning job per accepted blob version (a run that was ever Queued), none for others;
  - one model version per registered run, one owned endpoint per Deployed run, nothing else (each Deployed run's
    endpoint is deleted once noted, to keep 55 model servers off this machine's memory; one made again after
    that counts as a duplicate);
  - every upload has its run (a first version overwritten before the host saw it excepted), and nothing changed
    during the last reconciler window.

    .venv/bin/python bench/load.py [--valid 50] [--overwrites 5] [--deep 5] [--timeout 3600] [--keep]

The ledger is printed as text and, on the last line, as JSON. Endpoints and job processes are stopped at the end;
`--keep` leaves the state folder (its path is printed) for a look at the jobs' logs.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatft_local.host import LocalHost  # noqa: E402
from chatft_local.sample_data import sample_records  # noqa: E402
from chatft_local.uploads import upload_training_file  # noqa: E402
from shared.ml.port import TAG_APP  # noqa: E402
from shared.runs import Run, State  # noqa: E402
from tests.test_end_to_end import write_sample  # noqa: E402
from tests.test_failure_behaviour import TERMINAL, Scenario  # noqa: E402
from tests.test_ingest_holes import deep_line  # noqa: E402
from tests.test_ingestion import valid_lines  # noqa: E402

RECONCILE = {"RECONCILE_SCHEDULE": "*/2 * * * * *", "RECONCILE_AFTER_MINUTES": "0.5"}
# Three fine-tunes at a time (an Azure ML cluster's max_instances): each job process holds ~400 MB once torch is in.
SETTINGS = {**RECONCILE, "EVAL_GATE": "off", "LOCAL_MAX_JOBS": "3"}
VALID_RECORDS = 20  # per valid upload: the smallest real fine-tune (5 steps of 4 at 1 epoch)
# The first version of an overwritten upload: ~18 MB (5 of ingest's 4 MiB ranged reads), in few records that are
# each longer than max_seq_length (a warning; they are tokenized exactly, so validating takes seconds); uploaded
# with max_seq_length 16, so that if validation wins the race the fine-tune is still short.
LARGE_RECORDS, LARGE_RECORD_BYTES = 300, 60_000


def write_large(path: Path, seed: int) -> Path:
    records = sample_records(LARGE_RECORDS, seed=seed)
    for n, record in enumerate(records):
        filler = " ".join(f"w{seed}x{n}x{k}" for k in range(LARGE_RECORD_BYTES // 12))
        record["messages"][-1]["content"] += " " + filler
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _parse(t: str) -> float:
    return datetime.fromisoformat(t).timestamp()


class Load:
    def __init__(self, workdir: Path, args: argparse.Namespace):
        self.sc = Scenario(workdir, SETTINGS)
        self.args = args
        self.workdir = workdir
        self.uploaded: dict[str, dict] = {}  # run id -> {"kind", "blob", "at" (epoch seconds, upload finished)}
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self.ws = self.sc.workspace()
        self.endpoints_seen: set[str] = set()  # every owned endpoint any poll listed
        self.retired: set[str] = set()  # endpoints of Deployed runs this script deleted (see `retire`)
        self.recreated: set[str] = set()
        self.valid_window = 0.0  # seconds from the first valid upload's end to the last one's

    # -- uploads ---------------------------------------------------------------------------------------------

    def _put(self, kind: str, name: str, path: Path, **overrides: str) -> str:
        run_id = upload_training_file(self.sc.settings, path, {"epochs": "1", **overrides}, blob_name=name)[1]
        with self._lock:
            self.uploaded[run_id] = {"kind": kind, "blob": name, "at": time.time()}
        return run_id

    def _valid(self, i: int) -> str:
        path = write_sample(self.workdir / f"valid-{i}.jsonl", count=VALID_RECORDS, seed=1000 + i)
        return self._put("valid", f"load-valid-{i:03d}.jsonl", path)

    def _deep(self, i: int) -> str:
        depth, where = (300, 1000)[i % 2], ("prompt_id", "extra key")[(i // 2) % 2]
        lines = valid_lines(30)
        lines[7] = deep_line(depth, where)
        path = self.workdir / f"deep-{i}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return self._put(f"deep ({depth} levels in {where})", f"load-deep-{i:02d}.jsonl", path)

    def _overwrite(self, i: int, first: str) -> None:
        """Overwrite upload i once its first version's run is Validating (or give up on the race after 60 s)."""
        deadline = time.monotonic() + 60
        run = None
        while time.monotonic() < deadline:
            run = self.sc.store.find(first)
            if run is not None and run.state != State.RECEIVED:
                break
            time.sleep(0.05)
        seen = run.state.value if run else "not yet seen"
        path = write_sample(self.workdir / f"second-{i}.jsonl", count=VALID_RECORDS, seed=5000 + i)
        self._put("overwrite, second version", f"load-overwrite-{i:02d}.jsonl", path)
        if seen != State.VALIDATING.value:
            self.notes.append(f"load-overwrite-{i:02d}.jsonl: its first version was {seen} when overwritten")

    def upload_all(self) -> float:
        """Every upload; returns the seconds from the first to the last upload's end."""
        large = [write_large(self.workdir / f"first-{i}.jsonl", seed=3000 + i) for i in range(self.args.overwrites)]
        start = time.time()
        firsts = {}
        for i, path in enumerate(large):
            # max_seq_length 16: should validation win the race, the fine-tune of its 300 long records is short.
            firsts[i] = self._put("overwrite, first version", f"load-overwrite-{i:02d}.jsonl", path,
                                  max_seq_length="16")
        with ThreadPoolExecutor(8) as pool:
            waits = [pool.submit(self._overwrite, i, first) for i, first in firsts.items()]
            jobs = [pool.submit(self._valid, i) for i in range(self.args.valid)]
            jobs += [pool.submit(self._deep, i) for i in range(self.args.deep)]
            for f in jobs + waits:
                f.result()
        valid = [u["at"] for u in self.uploaded.values() if u["kind"] == "valid"]
        self.valid_window = max(valid) - min(valid) if valid else 0.0
        return max(u["at"] for u in self.uploaded.values()) - start

    # -- waiting ---------------------------------------------------------------------------------------------

    def runs(self) -> list[Run]:
        return [r for r in self.sc.store.list() if r.upload.get("blob", "").startswith("load-")]

    def retire(self, runs: list[Run]) -> None:
        """Note every owned endpoint, then delete those of Deployed runs: 55 model servers, each ~400 MB once torch
        is in, would not fit this machine (a user done with a model does the same). An endpoint listed again after
        its deletion would be the app making it twice."""
        listed = {e.name for e in self.ws.list_endpoints() if e.tags.get(TAG_APP) == self.sc.settings.app_id}
        self.recreated |= listed & self.retired
        self.endpoints_seen |= listed
        for r in runs:
            if r.state == State.DEPLOYED and r.endpoint_name in listed and r.endpoint_name not in self.retired:
                self.ws.begin_delete_endpoint(r.endpoint_name)
                self.retired.add(r.endpoint_name)

    def wait_terminal(self, timeout: float) -> list[Run]:
        deadline = time.monotonic() + timeout
        last_print = 0.0
        while True:
            runs = self.runs()
            self.retire(runs)
            open_runs = [r for r in runs if r.state not in TERMINAL]
            missing = self._missing(runs)
            if (not open_runs and not missing) or time.monotonic() > deadline:
                return runs
            if time.monotonic() - last_print > 30:
                last_print = time.monotonic()
                states = collections.Counter(r.state.value for r in runs)
                print(f"  {time.strftime('%H:%M:%S')} {dict(states)}, {len(missing)} uploads without a run",
                      flush=True)
            time.sleep(1)

    def _missing(self, runs: list[Run]) -> list[str]:
        """Uploads with no run, but a first version overwritten before the host listed it (never seen: no run is
        right, the blob trigger fires for what it sees)."""
        have = {r.run_id for r in runs}
        return [rid for rid, u in self.uploaded.items()
                if rid not in have and u["kind"] != "overwrite, first version"]

    # -- the ledger ------------------------------------------------------------------------------------------

    def ledger(self, runs: list[Run]) -> dict:
        ws = self.ws
        self.retire(runs)
        jobs_by_run: dict[str, list[str]] = collections.defaultdict(list)
        for spec in (ws.root / "jobs").glob("*/job.json"):
            job = json.loads(spec.read_text())
            jobs_by_run[job.get("run_id", "")].append(job["job_name"])
        mlflow = ws.registry._mlflow()
        versions = collections.Counter()
        for model in mlflow.search_registered_models(max_results=1000):
            versions[model.name] = len(mlflow.search_model_versions(f"name = '{model.name}'"))
        owned = self.endpoints_seen

        by_state = collections.Counter(r.state.value for r in runs)
        reasons: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        problems: list[str] = []
        accepted = [r for r in runs if State.QUEUED in [t.state for t in r.history if not t.kind]]
        slowest, slowest_run = 0.0, ""
        for r in runs:
            kind = self.uploaded.get(r.run_id, {}).get("kind", "not uploaded by this script")
            if r.state in (State.REJECTED, State.FAILED):
                reason = (r.failure.reason if r.failure else "") or r.history[-1].detail
                if not reason.strip():
                    problems.append(f"run {r.run_id} is {r.state.value} without a reason")
                reasons[f"{r.state.value} / {kind}"][_short(reason)] += 1
            else:
                reasons[f"{r.state.value} / {kind}"][""] += 1
            if r.state not in TERMINAL:
                problems.append(f"run {r.run_id} ({r.upload.get('blob')}) left {r.state.value}: {r.history[-1]}")
            elif r.run_id in self.uploaded:
                took = _parse(r.history[-1].at) - self.uploaded[r.run_id]["at"]
                if took > slowest:
                    slowest, slowest_run = took, f"{r.upload.get('blob')} ({r.state.value})"
        for rid in self._missing(runs):
            problems.append(f"upload {self.uploaded[rid]['blob']} ({self.uploaded[rid]['kind']}) has no run {rid}")
        accepted_ids = {r.run_id for r in accepted}
        for r in accepted:
            if len(jobs_by_run.get(r.run_id, [])) != 1:
                problems.append(f"accepted run {r.run_id} has {len(jobs_by_run.get(r.run_id, []))} jobs "
                                f"{jobs_by_run.get(r.run_id, [])} ({r.state.value})")
        for rid, names in jobs_by_run.items():
            if rid not in accepted_ids:
                problems.append(f"jobs {names} belong to no accepted run ({rid})")
        registered = [r for r in runs if r.model_name]
        # A model is named after its blob, so an overwritten blob's two accepted versions are versions 1 and 2 of
        # one model: a duplicate is a version no run holds, or two runs holding one version.
        holders = collections.Counter((r.model_name, r.model_version) for r in registered)
        for (name, version), n in holders.items():
            if n != 1:
                problems.append(f"model {name} version {version} is held by {n} runs")
        for name in {r.model_name for r in registered}:
            held = sum(1 for (m, _v) in holders if m == name)
            if versions.get(name, 0) != held:
                problems.append(f"model {name} has {versions.get(name, 0)} versions, runs hold {held}")
        extra_models = set(versions) - {r.model_name for r in registered}
        if extra_models:
            problems.append(f"models of no run: {sorted(extra_models)}")
        deployed = [r for r in runs if r.state == State.DEPLOYED]
        for r in deployed:
            if r.endpoint_name not in owned:
                problems.append(f"deployed run {r.run_id}: endpoint {r.endpoint_name} never seen")
        if self.recreated:
            problems.append(f"endpoints made again after their deletion: {sorted(self.recreated)}")
        extra_endpoints = set(owned) - {r.endpoint_name for r in deployed}
        if extra_endpoints:
            problems.append(f"endpoints of no Deployed run: {sorted(extra_endpoints)}")
        return {
            "uploads": len(self.uploaded), "runs": len(runs), "by_state": dict(by_state),
            "reasons": {k: dict(v) for k, v in sorted(reasons.items())},
            "accepted_versions": len(accepted), "jobs": sum(len(v) for v in jobs_by_run.values()),
            "runs_with_a_job": len(jobs_by_run),
            "model_versions": sum(versions.values()), "registered_runs": len(registered),
            "endpoints": len(owned), "deployed_runs": len(deployed),
            "non_terminal": sum(1 for r in runs if r.state not in TERMINAL),
            "slowest_upload_to_terminal_s": round(slowest, 1), "slowest_run": slowest_run,
            "problems": problems,
        }


def _short(reason: str) -> str:
    """A reason without the parts that differ per run (ids, etags, line numbers stay), to group the same ones."""
    import re

    reason = re.sub(r"\b[0-9a-f]{12,}\b", "<id>", reason)
    reason = re.sub(r"etag [^)\s]+", "etag <etag>", reason)
    return reason[:160]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--valid", type=int, default=50)
    p.add_argument("--overwrites", type=int, default=5)
    p.add_argument("--deep", type=int, default=5)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for every run to end (the full load took ~25 min on 2 shared cores)")
    p.add_argument("--keep", action="store_true", help="leave the state folder")
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="chatft-load-"))
    load = Load(workdir, args)
    window = float(RECONCILE["RECONCILE_AFTER_MINUTES"]) * 60 + 4  # stale after 30 s, checked every 2 s
    t0 = time.monotonic()
    host = LocalHost(port=0, env=load.sc.env).start()
    try:
        upload_s = load.upload_all()
        print(f"load: {len(load.uploaded)} uploads in {upload_s:.1f} s; waiting for every run to end", flush=True)
        runs = load.wait_terminal(args.timeout)
        ended_s = time.monotonic() - t0
        first = load.ledger(runs)
        time.sleep(window)  # the reconciler's window: nothing may move, nothing may be made twice
        ledger = load.ledger(load.runs())
        for key in ("jobs", "model_versions", "endpoints", "by_state"):
            if first[key] != ledger[key]:
                ledger["problems"].append(f"{key} changed in the reconciler's window: {first[key]} -> {ledger[key]}")
        ledger.update(upload_window_s=round(upload_s, 1), valid_upload_window_s=round(load.valid_window, 1), all_terminal_after_s=round(ended_s, 1),
                      wall_s=round(time.monotonic() - t0, 1), notes=load.notes)
    finally:
        host.stop()
        load.sc.close()
        if args.keep:
            print(f"state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print("\nload ledger:")
    print(f"  {args.valid} valid uploads in {ledger['valid_upload_window_s']} s; "
          f"uploads {ledger['uploads']} in {ledger['upload_window_s']} s -> runs {ledger['runs']}: "
          f"{ledger['by_state']}")
    for group, counts in ledger["reasons"].items():
        for reason, n in counts.items():
            print(f"  {n:3d} {group}" + (f": {reason}" if reason else ""))
    print(f"  accepted versions {ledger['accepted_versions']}, jobs {ledger['jobs']} "
          f"(runs with a job {ledger['runs_with_a_job']}), model versions {ledger['model_versions']} "
          f"(registered runs {ledger['registered_runs']}), endpoints {ledger['endpoints']} "
          f"(Deployed runs {ledger['deployed_runs']})")
    print(f"  non-terminal {ledger['non_terminal']}; slowest upload-to-terminal {ledger['slowest_upload_to_terminal_s']} s "
          f"({ledger['slowest_run']}); all terminal after {ledger['all_terminal_after_s']} s; wall {ledger['wall_s']} s")
    for note in ledger["notes"]:
        print(f"  note: {note}")
    for problem in ledger["problems"]:
        print(f"  FAILED: {problem}")
    print(json.dumps(ledger))
    return 1 if ledger["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
