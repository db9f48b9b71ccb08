"""The upstream client: how the proxy talks to deployments. One pooled aiohttp client per event loop, and each
endpoint's scoring URI and key (read from the ML backend once, single-flight, read again after a 401)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Mapping

import aiohttp

from .api_errors import JSON, ApiError
from .ml.port import MLBackendError, NotFound, ScoringTarget
from .runs import Run

log = logging.getLogger(__name__)

DEPLOYMENT_HEADER = "azureml-model-deployment"
ANSWERED_BY = "x-chatft-deployment"  # on an upstream error: the deployment that answered (Azure ML names it too)


@dataclass(frozen=True)
class Answer:
    """A successful answer of a deployment."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]  # case-insensitive
    run: Run


class EndpointGone(Exception):
    """The endpoint refused the connection, answered 404 or no longer exists: its run may have been retired."""

    def __init__(self, error: ApiError):
        super().__init__(error.message)
        self.error = error


class _LoopState:
    """What is bound to one event loop: the HTTP client and the single-flight key reads in progress."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.session: aiohttp.ClientSession | None = None
        self.target_tasks: dict[str, asyncio.Future] = {}


class UpstreamClient:
    """Sends scoring requests to deployments. `scoring_target` is the ML backend's `get_scoring_target`."""

    def __init__(self, scoring_target: Callable[[str], ScoringTarget], timeout_seconds: float):
        self._scoring_target = scoring_target
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._targets: dict[str, ScoringTarget] = {}
        self._state: _LoopState | None = None

    async def send(self, run: Run, body: bytes, pin: bool = True) -> Answer:
        """POST `body` to the run's endpoint, pinned to the run's deployment (`pin=False`: the endpoint's traffic
        split decides, as for a call by model line); `EndpointGone` when it is not there, ApiError on other
        failures (its headers name the deployment that answered, where the answer did: `x-chatft-deployment`)."""
        target = await self._target(run.endpoint_name)
        status, data, headers = await self._post(run, target, body, pin)
        if status == 401:  # the key was rotated: read it again, once
            if self._targets.get(run.endpoint_name) is target:
                del self._targets[run.endpoint_name]
            target = await self._target(run.endpoint_name)
            status, data, headers = await self._post(run, target, body, pin)
        if 200 <= status < 300:
            return Answer(data, headers.get("Content-Type", JSON), headers, run)
        log.warning("scoring via endpoint %s: the deployment answered %d", run.endpoint_name, status)
        said = {"x-chatft-upstream-status": str(status)}
        if headers.get(DEPLOYMENT_HEADER):
            said[ANSWERED_BY] = headers[DEPLOYMENT_HEADER]
        error = ApiError(502, "upstream_error", f"the deployment of run {run.run_id} answered HTTP {status}"
                                                f"{_excerpt(data)}", said)
        if status == 404:
            raise EndpointGone(error)
        raise error

    def forget(self, endpoint_name: str) -> None:
        """Drop the endpoint's cached address and key."""
        self._targets.pop(endpoint_name, None)

    async def _post(self, run: Run, target: ScoringTarget, body: bytes,
                    pin: bool = True) -> tuple[int, bytes, Mapping[str, str]]:
        headers = {"Content-Type": JSON, "Authorization": f"Bearer {target.key}"}
        deployment = run.deployment_name or target.deployment_name
        if deployment and pin:
            headers[DEPLOYMENT_HEADER] = deployment
        try:
            async with self._client().post(target.scoring_uri, data=body, headers=headers,
                                           timeout=self._timeout) as response:
                return response.status, await response.read(), response.headers
        except asyncio.TimeoutError:
            raise ApiError(504, "upstream_timeout", f"the deployment of run {run.run_id} did not answer within "
                                                    f"{self._timeout.total:g} s (setting SCORE_TIMEOUT_SECONDS)"
                           ) from None
        except aiohttp.ClientConnectorError:
            log.warning("scoring via endpoint %s: could not connect", run.endpoint_name)
            raise EndpointGone(ApiError(502, "upstream_unreachable", f"could not connect to the endpoint of run "
                                                                     f"{run.run_id} ({run.endpoint_name})")) from None
        except aiohttp.ClientError as exc:
            log.warning("scoring via endpoint %s: %s", run.endpoint_name, type(exc).__name__)
            raise ApiError(502, "upstream_unreachable", f"the connection to the endpoint of run {run.run_id} failed "
                                                        f"({type(exc).__name__})") from None

    def loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            # A new loop (a restarted local host in the same process): what the old one held cannot be used.
            self._state = _LoopState(loop)
        return self._state

    def _client(self) -> aiohttp.ClientSession:
        state = self.loop_state()
        if state.session is None or state.session.closed:
            state.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                                  skip_auto_headers=("User-Agent",))
        return state.session

    async def _target(self, endpoint_name: str) -> ScoringTarget:
        target = self._targets.get(endpoint_name)
        if target is not None:
            return target
        state = self.loop_state()
        task = state.target_tasks.get(endpoint_name)
        if task is None or task.done():
            task = state.target_tasks[endpoint_name] = asyncio.ensure_future(self._load_target(endpoint_name))
        return await asyncio.shield(task)

    async def _load_target(self, endpoint_name: str) -> ScoringTarget:
        try:
            target = await asyncio.to_thread(self._scoring_target, endpoint_name)
        except NotFound:
            raise EndpointGone(ApiError(502, "endpoint_not_found", f"endpoint {endpoint_name} does not exist"))
        except MLBackendError as exc:
            log.warning("reading the scoring target of endpoint %s failed: %s", endpoint_name, type(exc).__name__)
            raise ApiError(503, "backend_unavailable", f"the scoring address of endpoint {endpoint_name} could not "
                                                       f"be read; try again shortly", {"Retry-After": "5"}) from None
        self._targets[endpoint_name] = target
        return target

    async def close(self) -> None:
        """Close the HTTP client of the running loop."""
        state = self._state
        if state is not None and state.session is not None and state.loop is asyncio.get_running_loop():
            await state.session.close()


def _excerpt(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""
