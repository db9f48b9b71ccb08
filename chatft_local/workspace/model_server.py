"""A deployment's model server: one MLflow chat model behind the Azure ML online-endpoint scoring contract.

    python -m chatft_local.workspace.model_server --model-dir DIR --port N --key-file FILE --deployment NAME \
        [--endpoint-dir DIR] [--instance TOKEN] [--max-request-bytes N] [--max-new-tokens-limit N]

`POST /score` with `Authorization: Bearer <key>` takes the notebook's request
`{"input_data": {"input_string": [{"role", "content"}, ...], "parameters": {...}}, "params": {}}` (one
conversation) and answers `{"output": "<assistant text>"}`, as Azure ML chat deployments do; headers
`x-chatft-prompt-tokens`, `x-chatft-completion-tokens` and `x-chatft-finish-reason` (`stop`/`length`) carry usage.
The request is checked with the proxy's contract (`shared.protocol.ScoreRequest`): what the proxy accepts, this
server accepts (`return_full_text` changes nothing: the answer is the assistant's turn).
Errors are `{"error": "<what is wrong>"}`: 400 bad request, 401 wrong or missing key, 404 unknown deployment,
413 body too large, 503 still loading. `GET /` and `GET /health` answer 200 once the model is loaded (503 before).

With `--endpoint-dir` the server routes as an endpoint does: the `azureml-model-deployment` header names a
deployment (a sibling's request is forwarded to its server, whatever its share of traffic, 0% included), otherwise
the endpoint's live traffic decides, by weight, and a share of requests is copied to the deployment that
`mirror_traffic` names (its answer discarded). The split is deterministic (`TrafficSplit`), so tests can count it.
Every answer names the deployment that produced it in the `azureml-model-deployment` header, errors included.
The port is bound before the model loads, so it stays reserved while loading; SIGTERM stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from shared.protocol import Problem, ScoreAnswer, ScoreRequest, parse

log = logging.getLogger("chatft.model_server")

DEPLOYMENT_HEADER = "azureml-model-deployment"
DEFAULT_MAX_NEW_TOKENS = 256
FORWARD_TIMEOUT_SECONDS = 300.0
# Phi-3's chat format, for a local base model whose tokenizer carries no chat template.
FALLBACK_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class BadRequest(ValueError):
    """The scoring request is malformed; the message says what is wrong (never echoing its content)."""


@dataclass(frozen=True)
class ScoringRequest:
    messages: list[dict[str, str]]
    max_new_tokens: int
    do_sample: bool
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (max_new_tokens reached)


def parse_scoring_request(body: Any, max_new_tokens_limit: int) -> ScoringRequest:
    """The scoring request in `body` (parsed JSON), checked with the proxy's own contract
    (`shared.protocol.ScoreRequest`), so whatever the proxy forwards is accepted here; `max_new_tokens` is clamped
    to the limit. Parameters the contract does not name are ignored (a real deployment may know more)."""
    try:
        request = parse(ScoreRequest, body)
    except Problem as problem:
        raise BadRequest(str(problem)) from None
    params = request.input_data.parameters
    ignored = sorted(params.model_extra or {})
    if ignored:
        log.info("ignored parameters: %s", ", ".join(ignored)[:200])
    do_sample, temperature = bool(params.do_sample), params.temperature
    if temperature == 0.0:
        do_sample, temperature = False, None  # temperature 0 means greedy, as OpenAI-style callers mean it
    return ScoringRequest(
        messages=[{"role": m.role, "content": m.content} for m in request.input_data.input_string],
        max_new_tokens=min(params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, max_new_tokens_limit),
        do_sample=do_sample,
        temperature=temperature,
        top_p=params.top_p,
        top_k=params.top_k or None,  # 0 turns top-k filtering off, as in transformers
        repetition_penalty=params.repetition_penalty,
    )


class ChatModel:
    """An MLflow transformers model loaded as components; `complete` runs one generation (not thread-safe)."""

    def __init__(self, model_dir: str):
        import mlflow.transformers
        import torch

        components = mlflow.transformers.load_model(model_dir, return_type="components")
        self.tokenizer = components["tokenizer"]
        if not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = components["model"].to(self.device).eval()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self._torch = torch

    def complete(self, request: ScoringRequest) -> Completion:
        inputs = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, return_dict=True,
                                                    return_tensors="pt").to(self.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        max_new_tokens = request.max_new_tokens
        if self.context_length:
            if prompt_tokens >= self.context_length:
                raise BadRequest(f"the conversation is {prompt_tokens} tokens; the model takes at most "
                                 f"{self.context_length - 1}")
            max_new_tokens = min(max_new_tokens, self.context_length - prompt_tokens)
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": request.do_sample}
        if request.do_sample:
            options.update({k: v for k, v in (("temperature", request.temperature), ("top_p", request.top_p),
                                              ("top_k", request.top_k)) if v is not None})
        if request.repetition_penalty is not None:
            options["repetition_penalty"] = request.repetition_penalty
        pad = self.tokenizer.pad_token_id
        options["pad_token_id"] = pad if pad is not None else self.tokenizer.eos_token_id
        with self._torch.inference_mode():
            output = self.model.generate(**inputs, **options)
        new_tokens = output[0][prompt_tokens:].tolist()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        ended = bool(new_tokens) and new_tokens[-1] in eos_ids
        return Completion(text=self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
                          prompt_tokens=prompt_tokens, completion_tokens=len(new_tokens),
                          finish_reason="stop" if ended or len(new_tokens) < max_new_tokens else "length")


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class TrafficSplit:
    """Picks deployments by weight, deterministically: smooth weighted round-robin (as nginx balances upstreams),
    so over any 100 consecutive requests a deployment at p% gets exactly p of them, interleaved, and the mirrored
    share is every (100/p)th request. Own code rather than random draws: a test can count the split exactly (Azure
    splits at random; only the proportions are promised). Written here because it is twelve lines; no library."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}
        self._mirror_credit = 0

    def pick(self, traffic: dict[str, int]) -> str:
        """The deployment for the next request; `traffic` holds only positive shares."""
        self._current = {name: self._current.get(name, 0) for name in traffic}
        for name, weight in traffic.items():
            self._current[name] += weight
        chosen = max(sorted(traffic), key=lambda n: self._current[n])
        self._current[chosen] -= sum(traffic.values())
        return chosen

    def mirror(self, percent: int) -> bool:
        """Whether the next request is copied to the mirrored deployment (`percent` of requests are)."""
        self._mirror_credit += percent
        if self._mirror_credit >= 100:
            self._mirror_credit -= 100
            return True
        return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class ModelServer:
    """The aiohttp application of one deployment."""

    def __init__(self, *, model_dir: str, key: str, deployment: str, endpoint_dir: Path | None, instance: str,
                 max_request_bytes: int, max_new_tokens_limit: int):
        self.model_dir = model_dir
        self.key = key
        self.deployment = deployment
        self.endpoint_dir = endpoint_dir
        self.instance = instance
        self.max_request_bytes = max_request_bytes
        self.max_new_tokens_limit = max_new_tokens_limit
        self.model: ChatModel | None = None
        self._generate = asyncio.Lock()  # one generation at a time: the model is not shared across threads
        self._session: ClientSession | None = None
        self._split = TrafficSplit()
        self._mirrors: set[asyncio.Task] = set()
        # LOCAL_FAULTS `score@<deployment>=error:N` (a testing aid): this server's first N answers are 500s.
        from shared.ml.faults import scoring_faults

        self._faults_left = scoring_faults(os.environ.get("LOCAL_FAULTS", ""), deployment)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_request_bytes)
        app.router.add_get("/", self.health)
        app.router.add_get("/health", self.health)
        app.router.add_post("/score", self.score)
        app.on_cleanup.append(self._close_session)
        return app

    async def load(self) -> None:
        started = time.monotonic()
        self.model = await asyncio.to_thread(ChatModel, self.model_dir)
        log.info("deployment %s loaded its model in %.1f s (%s)", self.deployment, time.monotonic() - started,
                 self.model.device)

    async def health(self, request: web.Request) -> web.Response:
        status = "ready" if self.model is not None else "loading"
        return web.json_response({"status": status, "deployment": self.deployment, "instance": self.instance},
                                 status=200 if self.model is not None else 503)

    async def score(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        request_id = request.headers.get("x-request-id", "")[:64] or str(uuid.uuid4())
        response = await self._score(request, request_id)
        response.headers.setdefault("x-request-id", request_id)
        response.headers.setdefault(DEPLOYMENT_HEADER, self.deployment)
        log.info("score %s deployment=%s status=%d tokens=%s/%s %.2fs", request_id, self.deployment, response.status,
                 response.headers.get("x-chatft-prompt-tokens", "-"),
                 response.headers.get("x-chatft-completion-tokens", "-"), time.monotonic() - started)
        return response

    async def _score(self, request: web.Request, request_id: str) -> web.Response:
        presented = request.headers.get("Authorization", "")
        if not (presented.startswith("Bearer ") and hmac.compare_digest(presented[7:].strip().encode(),
                                                                          self.key.encode())):
            return _error(401, "missing or wrong key: send Authorization: Bearer <endpoint key>",
                          **{"WWW-Authenticate": "Bearer"})
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            return _error(413, f"request body is larger than {self.max_request_bytes} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body is larger than {self.max_request_bytes} bytes")

        named = request.headers.get(DEPLOYMENT_HEADER)
        target = self._route(named)
        if isinstance(target, web.Response):
            return target
        if not named:
            self._maybe_mirror(request, raw, request_id)
        if target != self.deployment:
            return await self._forward(target, request, raw, request_id)
        if self.model is None:
            return _error(503, f"deployment {self.deployment} is loading its model; retry shortly",
                          **{"Retry-After": "5"})
        if self._faults_left > 0:
            self._faults_left -= 1
            log.warning("LOCAL_FAULTS: deployment %s answers request %s with 500", self.deployment, request_id)
            return _error(500, f"deployment {self.deployment} failed to score the request (injected by LOCAL_FAULTS)")
        try:
            scoring = parse_scoring_request(json.loads(raw), self.max_new_tokens_limit)
        except ValueError as e:  # BadRequest, and JSON that does not parse
            return _error(400, str(e) if isinstance(e, BadRequest) else "the body is not valid JSON")
        async with self._generate:
            try:
                completion = await asyncio.to_thread(self.model.complete, scoring)
            except BadRequest as e:
                return _error(400, str(e))
            except Exception as e:  # a broken model: answered as Azure's inference server does, 500, and logged
                log.exception("deployment %s failed to score request %s", self.deployment, request_id)
                return _error(500, f"deployment {self.deployment} failed to score the request ({type(e).__name__})")
        return web.json_response(ScoreAnswer(output=completion.text).model_dump(), headers={
            DEPLOYMENT_HEADER: self.deployment,
            "x-chatft-prompt-tokens": str(completion.prompt_tokens),
            "x-chatft-completion-tokens": str(completion.completion_tokens),
            "x-chatft-finish-reason": completion.finish_reason,
        })

    def _route(self, named: str | None) -> str | web.Response:
        """The deployment that serves this request, or the error response when none can."""
        if self.endpoint_dir is None:
            if named and named != self.deployment:
                return _error(404, f"deployment {named[:64]} not found")
            return self.deployment
        endpoint = self.endpoint_dir.name
        if named:
            if named == self.deployment or (self.endpoint_dir / "deployments" / named / "deployment.json").is_file():
                return named
            return _error(404, f"deployment {named[:64]} not found on endpoint {endpoint}")
        traffic = {k: v for k, v in (_read_json(self.endpoint_dir / "endpoint.json").get("traffic") or {}).items()
                   if isinstance(v, int) and v > 0}
        if not traffic:
            return _error(404, f"endpoint {endpoint} routes no traffic to any deployment; set its traffic or name a "
                               f"deployment in the {DEPLOYMENT_HEADER} header")
        return self._split.pick(traffic)

    def _maybe_mirror(self, request: web.Request, body: bytes, request_id: str) -> None:
        """Copy the request to the endpoint's mirrored deployment, if this one is due; its answer is discarded."""
        if self.endpoint_dir is None:
            return
        mirror = {k: v for k, v in (_read_json(self.endpoint_dir / "endpoint.json").get("mirror_traffic") or {})
                  .items() if isinstance(v, int) and v > 0}
        if not mirror:
            return
        (deployment, percent), = mirror.items()
        if not self._split.mirror(percent):
            return
        task = asyncio.ensure_future(self._forward(deployment, request, body, f"{request_id}-mirror"))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _forward(self, deployment: str, request: web.Request, body: bytes, request_id: str) -> web.Response:
        """Hand a request for a sibling deployment of the endpoint to that deployment's server."""
        assert self.endpoint_dir is not None
        port = _read_json(self.endpoint_dir / "deployments" / deployment / "deployment.json").get("port")
        if not isinstance(port, int):
            return _error(404, f"deployment {deployment} not found on endpoint {self.endpoint_dir.name}")
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=FORWARD_TIMEOUT_SECONDS))
        headers = {"Authorization": request.headers.get("Authorization", ""), DEPLOYMENT_HEADER: deployment,
                   "Content-Type": request.headers.get("Content-Type", "application/json"), "x-request-id": request_id}
        try:
            async with self._session.post(f"http://127.0.0.1:{port}/score", data=body, headers=headers) as upstream:
                payload = await upstream.read()
                kept = {k: v for k, v in upstream.headers.items()
                        if k.lower().startswith("x-chatft-") or k.lower() in (DEPLOYMENT_HEADER, "retry-after")}
                return web.Response(status=upstream.status, body=payload, headers=kept,
                                    content_type=upstream.content_type)
        except (ClientError, asyncio.TimeoutError):
            return _error(503, f"deployment {deployment} is not answering; retry shortly",
                          **{"Retry-After": "5", DEPLOYMENT_HEADER: deployment})

    async def _close_session(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()


async def serve(server: ModelServer, port: int, host: str = "127.0.0.1") -> int:
    """Bind, load the model, serve until SIGTERM/SIGINT. Returns the exit status (1 when the model cannot load)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        log.info("deployment %s listening on http://%s:%d (instance %s); loading %s", server.deployment, host, port,
                 server.instance, server.model_dir)
        loading = asyncio.ensure_future(server.load())
        stop_wait = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({loading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done() and loading.exception() is not None:
            error = loading.exception()
            # The last line of the log is what the workspace reports as the deployment's error.
            print(f"model server failed to load the model: {type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}"[:500], flush=True)
            return 1
        await stop_wait
        loading.cancel()
        log.info("deployment %s stopping", server.deployment)
        return 0
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatft_local.workspace.model_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="MLflow transformers model folder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", required=True, help="file holding the endpoint key (kept owner-only)")
    parser.add_argument("--deployment", required=True, help="this deployment's name")
    parser.add_argument("--endpoint-dir", help="the endpoint's state folder: enables traffic and header routing")
    parser.add_argument("--instance", default="", help="token the liveness route reports (identifies this process)")
    parser.add_argument("--max-request-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--max-new-tokens-limit", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    try:
        key = Path(args.key_file).read_text().strip()
    except OSError as e:
        print(f"model server cannot read its key file: {e.strerror}", flush=True)
        return 1
    if not key:
        print("model server's key file is empty", flush=True)
        return 1
    server = ModelServer(model_dir=args.model_dir, key=key, deployment=args.deployment,
                         endpoint_dir=Path(args.endpoint_dir) if args.endpoint_dir else None,
                         instance=args.instance, max_request_bytes=args.max_request_bytes,
                         max_new_tokens_limit=args.max_new_tokens_limit)
    try:
        return asyncio.run(serve(server, args.port))
    except OSError as e:  # the port is taken
        print(f"model server cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
