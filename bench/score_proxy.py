"""Benchmark: what the scoring proxy adds in front of a deployment.

A stand-in deployment (aiohttp on 127.0.0.1, its own process) answers like an Azure ML chat deployment after a
fixed delay. The real function_app is served by the local host (`chatft host`, its own process) with a Deployed run
in Azurite whose endpoint is the stand-in; a minimal in-bench ML backend hands the proxy the stand-in's scoring URI
and key. The same load of notebook-shaped scoring requests goes straight to the stand-in ("direct") and through
`POST /api/score/{run_id}` ("proxy"), at concurrency 1 and 64, from an aiohttp client in this process.
The anchor: LiteLLM's OpenAI-compatible proxy server (its own process, `litellm --config`, from the venv that
`make bench` builds from bench/requirements.txt) in front of the stand-in's OpenAI-compatible route, loaded with
the same conversation as a Chat Completions request ("litellm"), beside that route called straight ("direct_openai").

    .venv/bin/python bench/score_proxy.py [--delay-ms 20] [--requests 500] [--concurrent-requests 2000] [--rounds 3]
                                          [--litellm .venv-litellm/bin/litellm]

Targets: p50 added latency under 2 ms; proxy throughput at least 80% of direct at concurrency 64.
Client, host, stand-in and Azurite share this machine's cores (2 here), so at concurrency 64 the three processes
compete for CPU: the throughput ratio is a lower bound of what a host on its own cores would reach.
At concurrency 64 the modes alternate for `--rounds` rounds and each figure is the median over them. The host
logs at WARNING by default (`--host-log-level INFO` adds its line per invocation). The last line printed is a JSON
object of the figures and ratios; `litellm_p50_added_ms_c1` and `litellm_throughput_ratio_c64` are LiteLLM's
against the stand-in's OpenAI route (null when LiteLLM is not installed).

Run by the local host as its app module (`--app bench.score_proxy`, with CHATFT_BENCH_UPSTREAM set), this file
also installs the bench's services in the host process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

UPSTREAM_ENV = "CHATFT_BENCH_UPSTREAM"  # the stand-in's scoring URI, in the host process
KEY_ENV = "CHATFT_BENCH_KEY"  # the stand-in's key
ENDPOINT = "ft-bench-endpoint"
DEPLOYMENT = "demo"
P50_TARGET_MS = 2.0
THROUGHPUT_TARGET = 0.8
BODY = json.dumps({"input_data": {"input_string": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Explain in two sentences what LoRA fine-tuning changes in a language model."}],
    "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}},
    "params": {}}).encode()
TEXT = ("LoRA freezes the pretrained weights and learns small low-rank matrices added to chosen layers, so only a "
        "tiny fraction of parameters is trained.")
ANSWER = json.dumps({"output": TEXT}).encode()
# The same conversation and parameters as BODY, as OpenAI Chat Completions (what LiteLLM's proxy takes).
CHAT_BODY = json.dumps({"model": "bench-model", "messages": json.loads(BODY)["input_data"]["input_string"],
                        "temperature": 0.6, "top_p": 0.9, "max_tokens": 200}).encode()
LITELLM_VENV = ROOT / ".venv-litellm"


# ------------------------------------------------------------------------------ inside the host process


class BenchBackend:
    """The one ML backend call the proxy makes: where the (stand-in) endpoint is and its key."""

    def __init__(self, scoring_uri: str, key: str):
        self._uri, self._key = scoring_uri, key

    def get_scoring_target(self, endpoint_name: str):
        from shared.ml.port import NotFound, ScoringTarget

        if endpoint_name != ENDPOINT:
            raise NotFound(f"endpoint {endpoint_name} not found")
        return ScoringTarget(endpoint_name, self._uri, self._key, DEPLOYMENT)


if os.environ.get(UPSTREAM_ENV):  # imported by the local host as its app module
    from function_app import app  # noqa: F401  (the host serves this FunctionApp)
    from shared.bootstrap import bootstrap, override_services

    override_services(bootstrap(ml=BenchBackend(os.environ[UPSTREAM_ENV], os.environ[KEY_ENV])))


# ------------------------------------------------------------------------------ the stand-in deployment


def serve_stand_in(ready, delay_s: float, key: str) -> None:
    """A chat deployment: Bearer key check, a fixed delay, `{"output": ...}` on `/score`; the same answer as an
    OpenAI `chat.completion` on `/v1/chat/completions` (the route LiteLLM's proxy calls)."""
    from aiohttp import web

    expected = f"Bearer {key}"
    counter = iter(range(1 << 62))

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": {"message": "unauthorized", "type": "invalid_request_error",
                                                "param": None, "code": "invalid_api_key"}}, status=401)
        await asyncio.sleep(delay_s)
        return web.json_response({
            "id": f"chatcmpl-{next(counter)}", "object": "chat.completion", "created": int(time.time()),
            "model": "bench-model", "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT},
                                                 "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70}})

    async def score(request: web.Request) -> web.Response:
        await request.read()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "unauthorized"}, status=401)
        await asyncio.sleep(delay_s)
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/score", score)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        ready.put(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------------------ load


async def load(url: str, headers: dict[str, str], body: bytes, requests: int, concurrency: int) -> dict[str, float]:
    """Send `requests` POSTs with `concurrency` in flight; latency percentiles (ms) and throughput (req/s)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    remaining = requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                errors += response.status != 200
            latencies.append((time.perf_counter() - started) * 1000)

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        for _ in range(2):  # open every connection (here and in the proxy) and fill the proxy's caches
            await asyncio.gather(*(one() for _ in range(concurrency)))
        latencies.clear()
        remaining = requests
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{errors} request(s) to {url} failed")
    latencies.sort()
    return {"p50_ms": statistics.median(latencies), "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
            "throughput_rps": requests / elapsed}


def create_run(connection: str, table: str) -> str:
    """A Deployed run whose endpoint is the stand-in."""
    from shared.run_store import RunStore
    from shared.runs import State, new_run, utcnow

    now = utcnow()
    run = new_run(f"bench-{uuid.uuid4().hex[:12]}", now)
    for state in (State.VALIDATING, State.QUEUED, State.SUBMITTED, State.TRAINED):
        run = run.advance(state, now)
    run = run.advance(State.REGISTERED, now, model_name="bench-model", model_version="1")
    run = run.advance(State.DEPLOYING, now, endpoint_name=ENDPOINT, deployment_name=DEPLOYMENT)
    run = run.advance(State.DEPLOYED, now)
    RunStore(connection, table).create(run)
    return run.run_id


def start_litellm(executable: Path, upstream_base: str, key: str, master_key: str, state_dir: Path):
    """LiteLLM's proxy server on 127.0.0.1 in front of the stand-in's OpenAI route; (process, base URL).

    Configured as its docs show for an OpenAI-compatible server (`openai/<model>` with `api_base`), one worker,
    no database, no callbacks, and the bundled model price map (it fetches one from GitHub at start otherwise).
    Callers present its master key, as callers of this proxy present a function key."""
    import subprocess

    import requests

    from chatft_local.workspace.endpoints import free_port

    port = free_port(set())
    config = state_dir / "litellm.yaml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "model_list": [{"model_name": "bench-model", "litellm_params": {
            "model": "openai/bench-model", "api_base": upstream_base, "api_key": key}}],
        "litellm_settings": {"drop_params": True, "telemetry": False, "set_verbose": False},
        "general_settings": {"master_key": master_key},
    }))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    log = open(state_dir / "litellm.log", "wb")
    process = subprocess.Popen([str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("LiteLLM's proxy exited:\n" + (state_dir / "litellm.log").read_text()[-2000:])
        try:
            if requests.get(base + "/health/liveliness", timeout=1).status_code == 200:
                return process, base
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError("LiteLLM's proxy did not start within 180 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the stand-in's answer delay (default 20)")
    parser.add_argument("--requests", type=int, default=500, help="requests per mode at concurrency 1")
    parser.add_argument("--concurrent-requests", type=int, default=2000, help="requests per mode at concurrency 64")
    parser.add_argument("--rounds", type=int, default=3, help="rounds at concurrency 64, modes alternating")
    parser.add_argument("--litellm", default=str(LITELLM_VENV / "bin" / "litellm"),
                        help="LiteLLM's proxy executable (make bench installs it); a missing one skips the anchor")
    parser.add_argument("--host-log-level", default="WARNING",
                        help="the host's log level (INFO logs one line per invocation)")
    args = parser.parse_args()

    from azure.data.tables import TableServiceClient

    from chatft_local.azurite import ensure_azurite
    from chatft_local.host import HostProcess

    state_dir = Path(tempfile.mkdtemp(prefix="chatft-bench-"))
    azurite = ensure_azurite(state_dir)
    key = secrets.token_urlsafe(24)
    ready: multiprocessing.Queue = multiprocessing.Queue()
    stand_in = multiprocessing.Process(target=serve_stand_in, args=(ready, args.delay_ms / 1000, key), daemon=True)
    stand_in.start()
    upstream = f"http://127.0.0.1:{ready.get(timeout=30)}/score"
    table = "bench" + uuid.uuid4().hex[:10]
    run_id = create_run(azurite.connection_string, table)
    env = {UPSTREAM_ENV: upstream, KEY_ENV: key, "AzureWebJobsStorage": azurite.connection_string,
           "RUNS_TABLE": table, "CLEANUP_SCHEDULE": "0 0 0 1 1 *", "TRAINING_CONTAINER": table + "-training",
           "RUNS_QUEUE": table + "-runs", "DEPLOY_QUEUE": table + "-deploy"}
    host = HostProcess("bench.score_proxy", state_dir=state_dir, env=env,
                       args=["--no-services", "--log-level", args.host_log_level]).start()
    litellm = None
    try:
        json_headers = {"Content-Type": "application/json"}
        modes = {"direct": (upstream, {"Authorization": f"Bearer {key}", "azureml-model-deployment": DEPLOYMENT,
                                       **json_headers}, BODY),
                 "proxy": (f"{host.base_url}/api/score/{run_id}", {"x-functions-key": host.function_key,
                                                                   **json_headers}, BODY)}
        if Path(args.litellm).is_file():
            master_key = "sk-" + secrets.token_hex(32)
            litellm, litellm_url = start_litellm(Path(args.litellm), upstream.removesuffix("/score") + "/v1", key,
                                                 master_key, state_dir)
            modes["direct_openai"] = (upstream.removesuffix("/score") + "/v1/chat/completions",
                                      {"Authorization": f"Bearer {key}", **json_headers}, CHAT_BODY)
            modes["litellm"] = (litellm_url + "/v1/chat/completions",
                                {"Authorization": f"Bearer {master_key}", **json_headers}, CHAT_BODY)
        else:
            print(f"LiteLLM not found at {args.litellm} (make bench installs it): the anchor is skipped", flush=True)
        rounds: dict[str, list[dict[str, float]]] = {}
        plan = [(1, args.requests)] + [(64, args.concurrent_requests)] * args.rounds
        for concurrency, count in plan:
            for mode, (url, headers, body) in modes.items():  # alternate: same conditions
                figures = asyncio.run(load(url, headers, body, count, concurrency))
                rounds.setdefault(f"{mode}_c{concurrency}", []).append(figures)
                print(f"{mode:13s} concurrency {concurrency:2d}: {count} requests  p50 {figures['p50_ms']:6.2f} ms  "
                      f"p99 {figures['p99_ms']:6.2f} ms  {figures['throughput_rps']:7.1f} req/s", flush=True)
    finally:
        if litellm is not None:
            litellm.terminate()
            litellm.wait(30)
        host.stop()
        stand_in.terminate()
        TableServiceClient.from_connection_string(azurite.connection_string).delete_table(table)
        azurite.stop()
        shutil.rmtree(state_dir, ignore_errors=True)

    # Each figure is its median over the rounds: the machine is shared, one round can be disturbed.
    results = {key: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
               for key, runs in rounds.items()}
    summary = {"cores": os.cpu_count(), "delay_ms": args.delay_ms, "rounds_c64": args.rounds,
               "host_log_level": args.host_log_level}
    for c in (1, 64):
        d, p = results[f"direct_c{c}"], results[f"proxy_c{c}"]
        summary[f"p50_added_ms_c{c}"] = round(p["p50_ms"] - d["p50_ms"], 3)
        summary[f"p99_added_ms_c{c}"] = round(p["p99_ms"] - d["p99_ms"], 3)
        summary[f"throughput_ratio_c{c}"] = round(p["throughput_rps"] / d["throughput_rps"], 3)
    # The anchor: what LiteLLM's proxy adds in front of the same stand-in (its OpenAI route), same run.
    anchored = "litellm_c1" in results
    for c in (1, 64):
        d, p = (results[f"direct_openai_c{c}"], results[f"litellm_c{c}"]) if anchored else (None, None)
        summary[f"litellm_p50_added_ms_c{c}"] = round(p["p50_ms"] - d["p50_ms"], 3) if anchored else None
        summary[f"litellm_throughput_ratio_c{c}"] = (round(p["throughput_rps"] / d["throughput_rps"], 3)
                                                     if anchored else None)
    summary["beats_litellm"] = (summary["p50_added_ms_c1"] < summary["litellm_p50_added_ms_c1"]
                                and summary["throughput_ratio_c64"] > summary["litellm_throughput_ratio_c64"]
                                if anchored else None)
    summary["p50_target_met"] = summary["p50_added_ms_c1"] < P50_TARGET_MS
    summary["throughput_target_met"] = summary["throughput_ratio_c64"] >= THROUGHPUT_TARGET
    print(f"shared machine: client, host, stand-in, Azurite (and LiteLLM) on {os.cpu_count()} cores")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
