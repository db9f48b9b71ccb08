"""The scoring proxy: one stable address in front of every deployed model.

A request names a model (a registered model name, `name:version`, or a run id; none means the newest Deployed
run). The proxy finds the run serving it, sends the scoring request straight to the run's endpoint with the
endpoint key (`Authorization: Bearer`) and the deployment header, and answers with what the endpoint said.
Per worker it keeps, in memory: the upstream client (`shared.upstream`: one pooled HTTP client, each endpoint's
scoring URI and key, re-read on a 401), the Deployed runs for a few seconds (so a score does not query the table
each time), and when each endpoint's last use was written (at most once a minute, off the event loop: the nightly
cleanup reads it).
Blocking calls (the run store, the ML backend) run in threads; the event loop only waits on sockets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping, TypeVar

import orjson

from .api_errors import JSON, ApiError, Reply, declares_encoding, error_reply, json_reply, parse_body
from .bootstrap import Services, services
from .lifecycle import on_shutdown
from .lines import line_views
from .run_views import is_model_ref, is_run_id, model_entry, model_list
from .runs import Run, State, iso
from .scoring import chat_completion, chat_request, check_score_request, completion_events, completion_json
from .upstream import ANSWERED_BY, DEPLOYMENT_HEADER, Answer, EndpointGone, UpstreamClient

log = logging.getLogger(__name__)
T = TypeVar("T")

RUN_CACHE_SECONDS = 5.0  # how long a model -> run lookup is reused; a failing endpoint is re-checked at once
LAST_USE_WRITE_SECONDS = 60.0  # last use is written at most this often per endpoint and worker
OUTCOME_WRITE_SECONDS = 10.0  # per-deployment outcomes are added to the run at most this often per run and worker
# States in which a run has (or had) a registered model: where a model name may be found when not Deployed.
_MODEL_STATES = (State.DEPLOYED, State.DEPLOYING, State.REGISTERED, State.HELD, State.RETIRED, State.FAILED)


@dataclass
class _Index:
    """The Deployed runs, newest first, by every name they can be asked for."""

    expires: float
    newest: Run | None
    runs: list[Run]
    by_ref: dict[str, Run]
    lines: dict[str, Any] = dataclasses.field(default_factory=dict)  # line name -> shared.lines.LineView

    @classmethod
    def of(cls, runs: list[Run], ttl: float) -> "_Index":
        """`runs`: the Deployed runs and the Deploying ones (whose canaries a line's answers may come from)."""
        every, runs = runs, [r for r in runs if r.state == State.DEPLOYED]
        by_ref: dict[str, Run] = {}
        for run in reversed(runs):  # oldest first, so the newest run of a model name wins
            by_ref[run.run_id] = run
            if run.model_name:
                by_ref[run.model_name] = run
                by_ref[f"{run.model_name}:{run.model_version}"] = run
        # A model line answers to its name (its newest Deployed version: callers never change the model id when a
        # version ships) and to `line:version` (that version's run, pinned by its deployment header). Lines come
        # last, so a line's name wins over a model name or run id that happens to be spelled the same.
        lines = line_views(every)
        for line in lines.values():
            by_ref[line.line] = line.current
            for version, run in line.by_version.items():
                by_ref[f"{line.line}:{version}"] = run
        return cls(time.monotonic() + ttl, runs[0] if runs else None, runs, by_ref, lines)


class ScoringProxy:
    """The worker's proxy over one `Services`. Use `proxy()` for the worker's; tests may build their own."""

    def __init__(self, svc: Services, run_cache_seconds: float = RUN_CACHE_SECONDS):
        self.svc = svc
        self._run_ttl = run_cache_seconds
        self.upstream = UpstreamClient(svc.ml.get_scoring_target, svc.settings.score_timeout_seconds)
        self._index: _Index | None = None
        self._index_task: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None  # single-flight read
        self._last_use: dict[str, datetime] = {}  # endpoint -> when its last use was last written (svc clock)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="chatft-last-use")
        self._outcomes: dict[tuple[str, str], list] = {}  # (run, endpoint) -> [requests, errors, latency ms] unwritten
        self._outcome_written: dict[str, float] = {}  # run -> when its outcomes were last written (monotonic)
        self._outcome_lock = threading.Lock()

    # ---------------------------------------------------------------------------------------- routes

    async def score(self, model: str | None, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """`POST /api/score[/{model}]`: an Azure ML scoring request, answered with the deployment's JSON as is.
        `headers` are the request's (Content-Encoding and the Content-Type charset decode the body)."""
        try:
            doc = parse_body(body, self.svc.settings.max_request_bytes, headers)
            check_score_request(doc)
            # Sent on as the deployment expects it: UTF-8 JSON, uncompressed (the bytes as sent when they were).
            answer = await self.forward(model or None, body if _plain(headers) else orjson.dumps(doc))
        except ApiError as err:
            return error_reply(err)
        return Reply(200, answer.body, answer.content_type, {"x-chatft-run": answer.run.run_id})

    async def chat(self, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        """`POST /api/v1/chat/completions`: OpenAI Chat Completions over the same deployments."""
        try:
            request = chat_request(parse_body(body, self.svc.settings.max_request_bytes, headers))
            answer = await self.forward(request.model, orjson.dumps(request.scoring_request))
            try:
                doc = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                raise ApiError(502, "upstream_bad_answer", "the deployment's answer is not JSON") from None
            completion = chat_completion(request, doc, answer.headers, f"chatcmpl-{uuid.uuid4().hex}",
                                         int(time.time()))
        except ApiError as err:
            return error_reply(err, openai=True)
        headers = {"x-chatft-run": answer.run.run_id}
        if request.stream:
            # The Python worker cannot stream a body without extensions: the events go out in one response.
            return Reply(200, completion_events(completion, request.include_usage), "text/event-stream",
                         {**headers, "Cache-Control": "no-cache"})
        return Reply(200, completion_json(completion), JSON, headers)

    async def models(self, model: str | None = None) -> Reply:
        """`GET /api/v1/models[/{model}]`: the deployed models in OpenAI's list shape (or one of them)."""
        try:
            index = await self._deployed()
        except ApiError as err:
            return error_reply(err, openai=True)
        if model is None:
            return json_reply(model_list(index.runs))
        run = index.by_ref.get(model)
        if run is None:
            return error_reply(ApiError(404, "model_not_found", f"no deployed model {model[:80]!r}; GET "
                                                                "/api/v1/models lists them"), openai=True)
        return json_reply(model_entry(model, run))

    # -------------------------------------------------------------------------------- forwarding

    async def forward(self, model: str | None, body: bytes) -> Answer:
        """Send a checked scoring request to the endpoint serving `model`; ApiError says why it could not."""
        if model is not None and is_model_ref(model):
            line = (await self._deployed()).lines.get(model)
            if line is not None and line.current is not None:
                return await self._forward_line(line, body)
        run = await self.resolve(model)
        try:
            return await self._send(run, body)
        except EndpointGone as gone:
            # Cleanup marks a run Retired before deleting its endpoint: look again before blaming the endpoint.
            self._forget(run)
            fresh = await self._store(self.svc.runs.find, run.run_id)
            if fresh is None or fresh.state != State.DEPLOYED:
                if model is not None:
                    raise self._not_serving(model, fresh) from None
                fresh = await self.resolve(None)  # the newest Deployed run now: the cache was dropped
            elif fresh.endpoint_name == run.endpoint_name:
                raise gone.error from None
        try:  # another run, or the same one deployed again on a new endpoint
            return await self._send(fresh, body)
        except EndpointGone as gone:
            raise gone.error from None

    async def _forward_line(self, line, body: bytes) -> Answer:
        """A call by model line: sent unpinned, so the line endpoint's traffic split decides (a canary takes its
        share); the outcome counts on the run whose deployment answered (it names itself in
        `azureml-model-deployment`). A deployment that fails (5xx, unreachable; not a timeout, not the caller's 4xx)
        is not the caller's problem while another serves the line: the request is sent again, pinned to the serving
        deployment (read again from the run store when that was the one failing: a rollback may have just moved the
        line); the failure still counts against the deployment that failed. At most three sends."""
        target, pin, tried = line.current, False, set()
        error: ApiError | None = None
        for _ in range(3):
            started = time.monotonic()
            try:
                answer = await self.upstream.send(target, body, pin=pin)
            except EndpointGone as gone:  # a stale address (locally, a deleted deployment's server): read it again
                self._forget(target)
                error, named = gone.error, (target.deployment_name if pin else "")
            except ApiError as err:
                upstream = err.headers.get("x-chatft-upstream-status", "")
                if err.status == 504 or not (err.status >= 500 and not (upstream.isdigit() and int(upstream) < 500)):
                    raise
                error, named = err, err.headers.get(ANSWERED_BY) or (target.deployment_name if pin else "")
            else:
                named = answer.headers.get(DEPLOYMENT_HEADER) or target.deployment_name
                who = line.by_deployment.get(named)
                if who is None:
                    self._index = None  # a deployment the cached index does not know: read the runs again
                self._note_outcome(who or target, ok=True, latency_ms=(time.monotonic() - started) * 1000)
                self._note_use(who or target)
                return dataclasses.replace(answer, run=who or target)
            failed = line.by_deployment.get(named) if named else None
            if failed is not None:
                self._note_outcome(failed, ok=False, latency_ms=(time.monotonic() - started) * 1000)
            tried.add(named or "?")
            if line.current.deployment_name not in tried:
                target, pin = line.current, True
            else:
                self._index = None
                fresh = (await self._deployed()).lines.get(line.line)
                if fresh is None or fresh.current is None or fresh.current.deployment_name in tried:
                    break
                line, target, pin = fresh, fresh.current, True
            log.warning("line %s: deployment %s failed (%s); sent again to %s", line.line, named or "(unnamed)",
                        error.code, target.deployment_name)
        assert error is not None
        raise error

    async def resolve(self, model: str | None) -> Run:
        """The Deployed run serving `model` (None: the newest); 404, 410 or 503 when there is none."""
        if model is not None and not is_model_ref(model):
            raise _unknown(model)
        index = await self._deployed()
        if model is None:
            if index.newest is None:
                raise ApiError(503, "no_deployed_model",
                               "no model is deployed: upload chat training data to start a run, or deploy a retired "
                               "run again with POST /api/runs/{id}/deploy (GET /api/runs lists runs)",
                               {"Retry-After": "60"})
            return index.newest
        run = index.by_ref.get(model)
        if run is not None:
            return run
        # Not among the cached Deployed runs: it may be newer than the cache, or not deployed at all.
        found = await self._store(self._find, model)
        if found is not None and found.state == State.DEPLOYED:
            self._index = None  # the cache missed a deployment: read it again next time
            return found
        raise self._not_serving(model, found)

    def _find(self, model: str) -> Run | None:
        """The run a model reference names (a Deployed one preferred), read from the store."""
        if is_run_id(model):
            run = self.svc.runs.find(model)
            if run is not None:
                return run
        name, _, version = model.partition(":")
        matches = [r for r in self.svc.runs.list(states=_MODEL_STATES)
                   if (r.model_name == name or r.line == name) and (not version or r.model_version == version)]
        deployed = [r for r in matches if r.state == State.DEPLOYED]
        return (deployed or matches or [None])[0]

    def _not_serving(self, model: str, run: Run | None) -> ApiError:
        shown = model[:80]
        if run is None or run.state == State.REJECTED or (run.state == State.FAILED and not run.model_name):
            return _unknown(model)
        if run.redeployable():
            how = f"deploy it again with POST /api/runs/{run.run_id}/deploy"
            if run.state == State.HELD:
                reason = run.evaluation.get("reason") or "the quality gate held it"
                return ApiError(409, "model_held", f"model {shown!r} (run {run.run_id}) was not deployed: {reason}; "
                                                   f"to deploy it anyway, POST /api/runs/{run.run_id}/deploy")
            if run.state == State.RETIRED:
                return ApiError(410, "model_retired", f"model {shown!r} (run {run.run_id}) was retired at "
                                                      f"{run.updated_at} and its endpoint deleted; {how}")
            reason = run.failure.reason if run.failure else "no detail"
            return ApiError(410, "model_not_deployed", f"the deployment of model {shown!r} (run {run.run_id}) "
                                                       f"failed: {reason}; {how}")
        return ApiError(503, "model_not_ready", f"model {shown!r} (run {run.run_id}) is {run.state}, not Deployed "
                                                f"yet; GET /api/runs/{run.run_id} shows its progress",
                        {"Retry-After": "60"})

    async def _send(self, run: Run, body: bytes) -> Answer:
        started = time.monotonic()
        try:
            answer = await self.upstream.send(run, body)
        except EndpointGone:
            self._note_outcome(run, ok=False, latency_ms=(time.monotonic() - started) * 1000)
            raise
        except ApiError as err:
            # Only the deployment's own failures count against it: a 4xx it answered is about the caller's request.
            upstream = err.headers.get("x-chatft-upstream-status", "")
            if err.status >= 500 and not (upstream.isdigit() and int(upstream) < 500):
                self._note_outcome(run, ok=False, latency_ms=(time.monotonic() - started) * 1000)
            raise
        self._note_outcome(run, ok=True, latency_ms=(time.monotonic() - started) * 1000)
        self._note_use(run)
        return answer

    # ------------------------------------------------------------------ per-deployment outcomes

    def _note_outcome(self, run: Run, ok: bool, latency_ms: float) -> None:
        """Count one request's outcome against the deployment of `run`; added to the run (where the deployments
        queue reads it: `Run.served`) at most every OUTCOME_WRITE_SECONDS, as last use is."""
        with self._outcome_lock:
            pending = self._outcomes.setdefault((run.run_id, run.endpoint_name), [0, 0, 0.0])
            pending[0] += 1
            pending[1] += 0 if ok else 1
            pending[2] += latency_ms
            now = time.monotonic()
            if now - self._outcome_written.get(run.run_id, 0.0) < OUTCOME_WRITE_SECONDS:
                return
            self._outcome_written[run.run_id] = now
            delta = self._outcomes.pop((run.run_id, run.endpoint_name))
        self._writer.submit(self._write_outcomes, run.run_id, run.endpoint_name, delta)

    def _write_outcomes(self, run_id: str, endpoint_name: str, delta: list) -> None:
        def add(r: Run) -> Run | None:
            if r.endpoint_name != endpoint_name:
                return None
            served = dict(r.served)
            served["requests"] = int(served.get("requests", 0)) + delta[0]
            served["errors"] = int(served.get("errors", 0)) + delta[1]
            served["latency_ms_total"] = round(float(served.get("latency_ms_total", 0.0)) + delta[2], 1)
            return r.edit(served=served)

        try:
            self.svc.runs.update(run_id, add)
        except Exception as exc:  # put the counts back: the next write carries them
            log.warning("recording the outcomes of run %s failed: %s", run_id, type(exc).__name__)
            with self._outcome_lock:
                pending = self._outcomes.setdefault((run_id, endpoint_name), [0, 0, 0.0])
                for i in range(3):
                    pending[i] += delta[i]

    # ---------------------------------------------------------------------------------- the caches

    async def _deployed(self) -> _Index:
        index = self._index
        if index is not None and index.expires > time.monotonic():
            return index
        loop = asyncio.get_running_loop()
        if self._index_task is None or self._index_task[0] is not loop or self._index_task[1].done():
            self._index_task = (loop, asyncio.ensure_future(self._load_index()))
            self._index_task[1].add_done_callback(_consume)
        if index is not None:
            # Expired: answer from it while it is read again, so no request waits on the table. A run retired
            # meanwhile is still caught, by the re-check when its endpoint fails.
            return index
        return await asyncio.shield(self._index_task[1])

    async def _load_index(self) -> _Index:
        self._index = _Index.of(await self._store(self.svc.runs.list, [State.DEPLOYED, State.DEPLOYING]),
                                self._run_ttl)
        return self._index

    @staticmethod
    async def _store(call: Callable[..., T], *args: Any) -> T:
        """A run store call, in a thread; 503 when the store cannot be read."""
        try:
            return await asyncio.to_thread(call, *args)
        except Exception as exc:
            log.warning("reading the run store failed: %s", type(exc).__name__)
            raise ApiError(503, "store_unavailable", "the run store could not be read; try again shortly",
                           {"Retry-After": "5"}) from None

    def _forget(self, run: Run) -> None:
        self._index = None
        self.upstream.forget(run.endpoint_name)

    # --------------------------------------------------------------------------------- last use

    def _note_use(self, run: Run) -> None:
        now = self.svc.clock()
        last = self._last_use.get(run.endpoint_name)
        if last is not None and (now - last).total_seconds() < LAST_USE_WRITE_SECONDS:
            return
        self._last_use[run.endpoint_name] = now
        self._writer.submit(self._write_last_use, run.run_id, run.endpoint_name, iso(now))

    def _write_last_use(self, run_id: str, endpoint_name: str, at: str) -> None:
        def touch(r: Run) -> Run | None:
            if r.endpoint_name != endpoint_name or r.last_used_at >= at:
                return None
            return r.edit(last_used_at=at, from_states=(State.DEPLOYED,))

        try:
            self.svc.runs.update(run_id, touch)
        except Exception as exc:  # a lost write only makes the endpoint look idler; the next minute retries
            log.warning("recording the last use of endpoint %s failed: %s", endpoint_name, type(exc).__name__)
            self._last_use.pop(endpoint_name, None)

    def flush(self, timeout: float = 30.0) -> None:
        """Write the outcomes counted so far and wait until every write begun is done (tests, shutdown)."""
        with self._outcome_lock:
            pending, self._outcomes = self._outcomes, {}
        for (run_id, endpoint_name), delta in pending.items():
            self._writer.submit(self._write_outcomes, run_id, endpoint_name, delta)
        self._writer.submit(lambda: None).result(timeout)

    async def close(self) -> None:
        """Close the HTTP client of the running loop and stop the last-use writer (after its pending writes)."""
        await self.upstream.close()
        self._writer.shutdown(wait=False)


def _consume(task: asyncio.Future) -> None:
    # A background refresh that failed was logged; mark its error seen so asyncio does not report it again.
    if not task.cancelled():
        task.exception()


def _unknown(model: str) -> ApiError:
    return ApiError(404, "model_not_found", f"no model or run named {model[:80]!r}; GET /api/v1/models lists the "
                                            f"deployed models, GET /api/runs every run")


_proxy: ScoringProxy | None = None
_lock = threading.Lock()


def proxy() -> ScoringProxy:
    """The worker's proxy, over the worker's services (a new one when tests install other services)."""
    global _proxy
    svc = services()
    with _lock:
        if _proxy is None or _proxy.svc is not svc:
            _proxy = ScoringProxy(svc)
            # Its HTTP client lives on the loop serving requests: the host closes it there when it stops.
            on_shutdown(close_proxy)
        return _proxy


async def close_proxy() -> None:
    """Close the worker's proxy, if one was made (on the loop that used it: `shared.lifecycle.shutdown` calls this
    as the host stops; tests call it between tests)."""
    global _proxy
    with _lock:
        current, _proxy = _proxy, None
    if current is not None:
        await current.close()


def _plain(headers: Mapping[str, str] | None) -> bool:
    """Whether a body arrived as UTF-8 JSON, uncompressed: then its own bytes go on to the deployment."""
    return not declares_encoding(headers)
