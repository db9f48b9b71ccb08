"""Benchmark: an upload's way from "upload finished" to its run being Queued (validation report and train/test
splits written) through the local Functions host on Azurite, beside the storage ceiling measured in the same run.

For each size an ultrachat-shaped upload is generated (bench/validate.py's generator), uploaded to a private
Azurite (free ports, its own data folder: the shared one on 10000-10002 is not loaded), and a fresh host
(`chatft host`, a child process, blob scan every 0.2 s) ingests it. The ingest time is from the end of the upload
to the run's Queued transition (its timestamp in the run's history, written after the report and the splits).
The ceiling is the same bytes downloaded with `shared.storage.read_chunks` and uploaded with
`shared.storage.BlockWriter` (the same SDK, chunk and block sizes the ingest uses), in this process, with nothing
else done to them: measured just before the host starts and just after the run is Queued, the mean counting. The host's peak RSS is its VmHWM (its own address space only).

    .venv/bin/python bench/ingest.py [--sizes 200,1000] [--dir /tmp] [--keep]

Targets: ingest at least 0.8 of the ceiling's throughput; host peak RSS under 200 MB and flat between sizes.
The generated files and the private Azurite's data are deleted at the end. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATIO_TARGET = 0.8
RSS_TARGET_MB = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generator():
    spec = importlib.util.spec_from_file_location("bench_validate", ROOT / "bench" / "validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def _vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ceiling(connection: str, container: str, blob_name: str) -> float:
    """Seconds to stream the blob down and back up with the ingest's own storage code and nothing else (the copy
    is deleted after, so Azurite holds the same data for every measurement)."""
    from shared.storage import Blobs, read_chunks

    blobs = Blobs(connection)
    source = blobs.blob(container, blob_name)
    etag = source.get_blob_properties().etag
    target = blobs.blob(container, f"ceiling-{uuid.uuid4().hex[:8]}.jsonl")
    writer = blobs.writer(container, target.blob_name)
    started = time.perf_counter()
    for chunk in read_chunks(source, etag=etag):
        writer.write(chunk)
    writer.close()
    seconds = time.perf_counter() - started
    target.delete_blob()
    return seconds


def _upload(connection: str, container_name: str, blob_name: str, path: Path) -> dict:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(connection).get_container_client(container_name)
    try:
        container.create_container()
    except ResourceExistsError:
        pass
    with open(path, "rb") as stream:
        return container.get_blob_client(blob_name).upload_blob(stream, overwrite=True, max_concurrency=2)


def ingest_once(azurite, path: Path, state_dir: Path) -> dict:
    """Upload `path`, let a fresh host ingest it; seconds from upload end to Queued, and the host's peak RSS."""
    from chatft_local.host import HostProcess
    from shared.config import Settings
    from shared.run_store import RunStore
    from shared.runs import State, parse_iso, run_id_for

    u = "b" + uuid.uuid4().hex[:8]
    names = {"TRAINING_CONTAINER": f"{u}-training", "RUNS_CONTAINER": f"{u}-runs", "RUNS_TABLE": f"{u}runs",
             "RUNS_QUEUE": f"{u}-runs", "DEPLOY_QUEUE": f"{u}-deploy"}
    env = {**names, "AzureWebJobsStorage": azurite.connection_string, "CHATFT_STATE_DIR": str(state_dir),
           "ML_BACKEND": "local", "MESSAGING": "storage-queue",
           # The queued run's submit then fails at once (no such model) instead of fine-tuning on this machine:
           # only ingestion is measured.
           "LOCAL_BASE_MODEL": str(state_dir / "no-model-here"), "VALIDATION_MAX_INVALID_FRACTION": "0.0"}
    settings = Settings.from_env(env)
    # The ceiling brackets the ingest: once before the host starts, once after the run is Queued, on a copy of the
    # same bytes in a container the host does not watch; their mean is the ceiling (Azurite on a shared machine
    # drifts, and bracketing cancels a drift).
    staging = f"{u}-staging"
    _upload(azurite.connection_string, staging, "ultrachat.jsonl", path)
    ceilings = [ceiling(azurite.connection_string, staging, "ultrachat.jsonl")]
    host = HostProcess(state_dir=state_dir, env=env, args=["--blob-scan-seconds", "0.2", "--no-services",
                                                           "--log-level", "WARNING"])
    host.start()
    try:
        props = _upload(azurite.connection_string, names["TRAINING_CONTAINER"], "ultrachat.jsonl", path)
        uploaded = time.time()
        run_id = run_id_for(names["TRAINING_CONTAINER"], "ultrachat.jsonl", str(props["etag"]))
        store = RunStore(settings, names["RUNS_TABLE"])
        deadline = time.monotonic() + 1800
        while True:
            run = store.find(run_id)
            queued = run.entered_at(State.QUEUED) if run else None
            if queued or (run and run.state == State.REJECTED):
                break
            if time.monotonic() > deadline or host.returncode is not None:
                raise RuntimeError(f"no Queued run {run_id}: {run.state if run else 'no run'}\n"
                                   + "\n".join(list(host.output)[-20:]))
            time.sleep(0.2)
        if not queued:
            raise RuntimeError(f"run {run_id} was rejected: {run.report.get('reason')}")
        seconds = parse_iso(queued).timestamp() - uploaded
        rss = _vm_hwm_mb(host._process.pid)
        split = run.report.get("split", {})
        ceilings.append(ceiling(azurite.connection_string, staging, "ultrachat.jsonl"))
        return {"ingest_s": round(seconds, 2), "ceiling_s": round(sum(ceilings) / len(ceilings), 2),
                "ceiling_runs_s": [round(c, 2) for c in ceilings], "host_peak_rss_mb": round(rss, 1),
                "split": split, "records": run.report.get("valid_records")}
    finally:
        host.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,1000", help="upload sizes in MB, comma-separated")
    parser.add_argument("--dir", default=None, help="where generated files and Azurite's data go (deleted after)")
    args = parser.parse_args()
    generate = _generator()
    workdir = Path(tempfile.mkdtemp(prefix="chatft-bench-ingest-", dir=args.dir))
    results: dict = {"sizes": {}}
    azurite = None
    try:
        from chatft_local.azurite import start_private_azurite

        ports = {"blob": _free_port(), "queue": _free_port(), "table": _free_port()}
        azurite = start_private_azurite(workdir / "azurite", ports)
        print(f"private Azurite on ports {ports}", flush=True)
        for size_mb in (int(s) for s in args.sizes.split(",")):
            path = workdir / f"upload-{size_mb}mb.jsonl"
            records = generate(path, size_mb)
            size = path.stat().st_size
            row = ingest_once(azurite, path, workdir / f"state-{size_mb}")
            row.update(bytes=size, generated_records=records,
                       ingest_mb_per_s=round(size / 1e6 / row["ingest_s"], 1),
                       ceiling_mb_per_s=round(size / 1e6 / row["ceiling_s"], 1))
            row["ratio"] = round(row["ceiling_s"] / row["ingest_s"], 3)
            results["sizes"][f"{size_mb}MB"] = row
            print(f"{size_mb} MB: {json.dumps(row)}", flush=True)
            path.unlink()
    finally:
        if azurite is not None:
            azurite.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = list(results["sizes"].values())
    rss = [r["host_peak_rss_mb"] for r in rows]
    results.update(ratio=min(r["ratio"] for r in rows), host_peak_rss_mb=max(rss),
                   rss_spread_mb=round(max(rss) - min(rss), 1))
    results["targets_met"] = {"ratio_0.8": results["ratio"] >= RATIO_TARGET,
                              "rss_under_200mb": results["host_peak_rss_mb"] < RSS_TARGET_MB,
                              "rss_flat": results["rss_spread_mb"] < 0.1 * RSS_TARGET_MB}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
