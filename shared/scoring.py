"""Scoring requests and the HTTP API's JSON: checking a scoring request in the Azure ML format, translating an
OpenAI Chat Completions request into one and the deployment's answer back, and the public view of a run.
Pure: no SDK, no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson

from .runs import Run, State, parse_iso

MESSAGE_ROLES = ("system", "user", "assistant")
# OpenAI's "developer" role is its newer name for "system"; the deployments only know the three above.
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH_REASONS = ("stop", "length")
MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_PROBLEMS = 10  # problems named in one 400; more are counted
MAX_TOKENS = 1_000_000  # above any deployed model's context; bounds the integers a caller may send

# Headers the local model server adds to its answers (Azure ML deployments do not send them).
PROMPT_TOKENS_HEADER = "x-chatft-prompt-tokens"
COMPLETION_TOKENS_HEADER = "x-chatft-completion-tokens"
FINISH_REASON_HEADER = "x-chatft-finish-reason"

# A model reference: a registered model name, optionally `:version`, or a run id (the OpenAPI document uses these).
MODEL_REF_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?::[A-Za-z0-9._-]{1,64})?"
RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9-]{0,79}"
_MODEL_REF = re.compile(MODEL_REF_PATTERN)
_RUN_ID = re.compile(RUN_ID_PATTERN)


class ApiError(Exception):
    """An answer other than success: HTTP status, a stable code and a message the caller can act on."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def error_body(err: ApiError) -> dict[str, Any]:
    """The API's error shape: `{"error": {"code", "message"}}`."""
    return {"error": {"code": err.code, "message": err.message}}


def openai_error_body(err: ApiError) -> dict[str, Any]:
    """OpenAI's error shape, for the /v1 routes."""
    kind = "invalid_request_error" if err.status < 500 else "api_error"
    return {"error": {"message": err.message, "type": kind, "param": None, "code": err.code}}


def parse_body(body: bytes, max_bytes: int) -> Any:
    """The request body as JSON; 413 beyond `max_bytes`, 400 when it is not JSON."""
    if len(body) > max_bytes:
        raise ApiError(413, "body_too_large", f"the request body is {len(body)} bytes; the limit is {max_bytes} "
                                              f"(setting MAX_REQUEST_BYTES)")
    if not body:
        raise ApiError(400, "invalid_body", "the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_body", f"the request body is not valid JSON: {exc}") from None


def is_model_ref(text: str) -> bool:
    """A model reference is a registered model name, `name:version`, or a run id."""
    return bool(_MODEL_REF.fullmatch(text))


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.fullmatch(text))


# ------------------------------------------------------------------------------ checking values


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where} {what}")

    def raise_if_any(self, shape: str) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_PROBLEMS]
        more = len(self.items) - len(shown)
        text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
        raise ApiError(400, "invalid_body", f"{text}. Expected {shape}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(problems: _Problems, where: str, value: Any, low: float, high: float | None = None,
            low_open: bool = False) -> None:
    if not _is_number(value):
        problems.add(where, "must be a number")
    elif value < low or (low_open and value == low) or (high is not None and value > high):
        bounds = f"above {low:g}" if low_open else f"at least {low:g}"
        problems.add(where, f"must be {bounds}" + (f" and at most {high:g}" if high is not None else ""))


def _positive_int(problems: _Problems, where: str, value: Any) -> None:
    if not _is_int(value) or not 1 <= value <= MAX_TOKENS:
        problems.add(where, f"must be a whole number from 1 to {MAX_TOKENS}")


# ------------------------------------------------------------------- the Azure ML scoring request

SCORE_SHAPE = ('{"input_data": {"input_string": [{"role": "user", "content": "..."}], "parameters": '
               '{"temperature": 0.6, "top_p": 0.9, "do_sample": true, "max_new_tokens": 200}}, "params": {}}')

# Generation parameters the deployments understand, checked when present; others are passed on unchanged.
_PARAMETER_CHECKS = {
    "temperature": lambda p, w, v: _number(p, w, v, 0.0),
    "top_p": lambda p, w, v: _number(p, w, v, 0.0, 1.0),
    "top_k": lambda p, w, v: None if _is_int(v) and 0 <= v <= MAX_TOKENS
    else p.add(w, f"must be a whole number from 0 to {MAX_TOKENS}"),
    "max_new_tokens": _positive_int,
    "repetition_penalty": lambda p, w, v: _number(p, w, v, 0.0, low_open=True),
    "do_sample": lambda p, w, v: None if isinstance(v, bool) else p.add(w, "must be true or false"),
    "return_full_text": lambda p, w, v: None if isinstance(v, bool) else p.add(w, "must be true or false"),
}


def check_score_request(doc: Any) -> None:
    """Check a scoring request in the Azure ML format (the notebook's `input_data` body); 400 names each problem."""
    problems = _Problems()
    if not isinstance(doc, dict):
        problems.add("the body", "must be a JSON object")
        problems.raise_if_any(SCORE_SHAPE)
    data = doc.get("input_data")
    if not isinstance(data, dict):
        problems.add("input_data", "is required and must be an object" if data is None else "must be an object")
        problems.raise_if_any(SCORE_SHAPE)
    messages = data.get("input_string")
    if not isinstance(messages, list) or not messages:
        problems.add("input_data.input_string", "must be a non-empty list of messages {role, content}")
    else:
        for i, message in enumerate(messages):
            _check_message(problems, f"input_data.input_string[{i}]", message)
    parameters = data.get("parameters", {})
    if not isinstance(parameters, dict):
        problems.add("input_data.parameters", "must be an object")
    else:
        for name, value in parameters.items():
            check = _PARAMETER_CHECKS.get(name)
            if check is not None:
                check(problems, f"input_data.parameters.{name}", value)
    if "params" in doc and not isinstance(doc["params"], dict):
        problems.add("params", "must be an object")
    problems.raise_if_any(SCORE_SHAPE)


def _check_message(problems: _Problems, where: str, message: Any) -> None:
    if isinstance(message, str):  # text-generation deployments take plain strings
        return
    if not isinstance(message, dict):
        problems.add(where, "must be a message {role, content} or a string")
        return
    if message.get("role") not in MESSAGE_ROLES:
        problems.add(f"{where}.role", "must be one of " + ", ".join(MESSAGE_ROLES))
    if not isinstance(message.get("content"), str):
        problems.add(f"{where}.content", "must be a string")


# ------------------------------------------------------------------ OpenAI Chat Completions

CHAT_SHAPE = ('an OpenAI Chat Completions request: {"model": "<model>", "messages": [{"role": "user", '
              '"content": "..."}], "temperature": 0.6, "top_p": 0.9, "max_tokens": 200}')
# OpenAI features the deployments cannot honour: a request using one is refused rather than half answered.
UNSUPPORTED = {
    "tools": "tools are not supported",
    "tool_choice": "tool_choice is not supported",
    "functions": "functions are not supported",
    "function_call": "function_call is not supported",
    "audio": "audio output is not supported",
}


@dataclass(frozen=True)
class ChatRequest:
    """An OpenAI chat request translated: the scoring request to send and what the answer must honour."""

    model: str
    scoring_request: dict[str, Any]
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def chat_request(doc: Any) -> ChatRequest:
    """Translate an OpenAI Chat Completions request into the Azure ML scoring request; 400 names each problem."""
    problems = _Problems()
    if not isinstance(doc, dict):
        problems.add("the body", "must be a JSON object")
        problems.raise_if_any(CHAT_SHAPE)
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        problems.add("model", "is required: a deployed model name or run id (see GET /api/v1/models)")
    messages = _chat_messages(problems, doc.get("messages"))
    for name, why in UNSUPPORTED.items():
        if doc.get(name) is not None:
            problems.add(name, f"is set: {why} by this API")
    if doc.get("logprobs") is not None and doc.get("logprobs") is not False:
        problems.add("logprobs", "must be false or left out: log probabilities are not available")
    response_format = doc.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        problems.add("response_format", "must be {\"type\": \"text\"} or left out: structured output is not supported")
    n = doc.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        problems.add("n", "must be 1: one choice per request")
    temperature, top_p = doc.get("temperature"), doc.get("top_p")
    if temperature is not None:
        _number(problems, "temperature", temperature, 0.0, 2.0)
    if top_p is not None:
        _number(problems, "top_p", top_p, 0.0, 1.0)
    max_tokens = doc.get("max_completion_tokens")
    max_name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_name = doc.get("max_tokens"), "max_tokens"
    if max_tokens is not None:
        _positive_int(problems, max_name, max_tokens)
    stop = _stop_sequences(problems, doc.get("stop"))
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        problems.add("stream", "must be true or false")
    include_usage = False
    options = doc.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            problems.add("stream_options", "must be an object {\"include_usage\": true|false}")
        else:
            include_usage = bool(options.get("include_usage"))
    problems.raise_if_any(CHAT_SHAPE)

    parameters: dict[str, Any] = {}
    if temperature is not None:
        # Sampling at temperature 0 is undefined for the deployments (transformers rejects it): decode greedily.
        parameters["do_sample"] = temperature > 0
        if temperature > 0:
            parameters["temperature"] = temperature
    if top_p is not None:
        parameters["top_p"] = top_p
    if max_tokens is not None:
        parameters["max_new_tokens"] = max_tokens
    body = {"input_data": {"input_string": messages, "parameters": parameters}, "params": {}}
    return ChatRequest(model=model, scoring_request=body, stop=stop, stream=bool(stream), include_usage=include_usage)


def _chat_messages(problems: _Problems, messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        problems.add("messages", "must be a non-empty list of {role, content}")
        return []
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.add(where, "must be an object {role, content}")
            continue
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            problems.add(f"{where}.role", "must be one of " + ", ".join(CHAT_ROLES) +
                         (" (tool messages are not supported)" if role in ("tool", "function") else ""))
            continue
        content = _text_content(problems, f"{where}.content", message.get("content"))
        if content is not None:
            out.append({"role": CHAT_ROLES[role], "content": content})
    return out


def _text_content(problems: _Problems, where: str, content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                problems.add(f"{where}[{j}]", "must be a text part {\"type\": \"text\", \"text\": \"...\"}: "
                                              "images, audio and files are not supported")
                return None
            texts.append(part["text"])
        return "".join(texts)
    problems.add(where, "must be a string or a list of text parts")
    return None


def _stop_sequences(problems: _Problems, stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    values = [stop] if isinstance(stop, str) else stop
    if (not isinstance(values, list) or len(values) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and s for s in values)):
        problems.add("stop", f"must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them")
        return ()
    return tuple(values)


def output_text(answer: Any) -> str:
    """The generated text in a deployment's answer: `{"output": "..."}` from chat deployments; the list shapes
    of text-generation deployments are read too. 502 on anything else."""
    if isinstance(answer, list) and answer:
        answer = answer[0]
    if isinstance(answer, str):
        return answer
    if isinstance(answer, dict):
        for key in ("output", "0", "generated_text"):
            if isinstance(answer.get(key), str):
                return answer[key]
    raise ApiError(502, "upstream_bad_answer", "the deployment answered without generated text (expected "
                                               "{\"output\": \"...\"})")


def apply_stop(text: str, stop: Iterable[str]) -> tuple[str, bool]:
    """Cut `text` before the first stop sequence; also says whether one was found (deployments may ignore them)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = (headers.get(name) or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def chat_completion(request: ChatRequest, answer: Any, headers: Mapping[str, str], completion_id: str,
                    created: int) -> dict[str, Any]:
    """The OpenAI `chat.completion` for a deployment's answer; usage and finish reason from the local model
    server's headers when it sends them (`headers` must be case-insensitive, as HTTP headers are)."""
    text, stopped = apply_stop(output_text(answer), request.stop)
    finish = "stop" if stopped else headers.get(FINISH_REASON_HEADER, "stop")
    completion: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish if finish in FINISH_REASONS else "stop"}],
    }
    prompt, generated = _header_int(headers, PROMPT_TOKENS_HEADER), _header_int(headers, COMPLETION_TOKENS_HEADER)
    if prompt is not None and generated is not None:
        completion["usage"] = {"prompt_tokens": prompt, "completion_tokens": generated,
                               "total_tokens": prompt + generated}
    return completion


def completion_events(completion: dict[str, Any], include_usage: bool = False) -> bytes:
    """A `chat.completion` as OpenAI's server-sent `chat.completion.chunk` events, ending with `data: [DONE]`."""
    choice = completion["choices"][0]
    head = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"]}

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    if choice["message"]["content"]:
        chunks.append(chunk({"content": choice["message"]["content"]}, None))
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage and "usage" in completion:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


# ----------------------------------------------------------------------------- models and runs


def _unix(text: str) -> int:
    return int(parse_iso(text).timestamp())


def model_entry(model_id: str, run: Run) -> dict[str, Any]:
    """One OpenAI `model` object for a deployed run."""
    return {"id": model_id, "object": "model", "created": _unix(run.entered_at(State.DEPLOYED) or run.created_at),
            "owned_by": "chatft"}


def model_list(deployed: Iterable[Run]) -> dict[str, Any]:
    """OpenAI's model list: each registered model name (its newest deployed run serves it), then each run id."""
    runs = sorted(deployed, key=lambda r: (r.created_at, r.run_id), reverse=True)
    by_name: dict[str, Run] = {}
    for run in runs:
        if run.model_name:
            by_name.setdefault(run.model_name, run)
    data = [model_entry(name, run) for name, run in by_name.items()]
    data += [model_entry(run.run_id, run) for run in runs if run.run_id not in by_name]
    return {"object": "list", "data": data}


def redeployable(run: Run) -> bool:
    return run.state in (State.RETIRED, State.FAILED) and bool(run.model_name)


def run_view(run: Run) -> dict[str, Any]:
    """What the API shows of a run: states with times, report summary, job, metrics, model, endpoint. No secrets
    are kept on a run; this still lists fields one by one so nothing new appears unreviewed."""
    view: dict[str, Any] = {
        "run_id": run.run_id,
        "state": run.state.value,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "history": [t.to_dict() for t in run.history],
        "reconciled_at": run.reconciled_at or None,
        "upload": {k: run.upload[k] for k in ("container", "blob", "size") if k in run.upload},
        "report": run.report,
        "job": {"name": run.job_name, "status": run.job_status} if run.job_name else None,
        "metrics": run.metrics,
        "model": ({"name": run.model_name, "version": run.model_version, "id": run.model_id}
                  if run.model_name else None),
        "endpoint": ({"name": run.endpoint_name, "deployment": run.deployment_name, "scoring_uri": run.scoring_uri,
                      "last_used_at": run.last_used_at or None, "keep": run.keep} if run.endpoint_name else None),
        "failure": {"stage": run.failure.stage, "reason": run.failure.reason} if run.failure else None,
        "links": {"self": f"/api/runs/{run.run_id}"},
    }
    if run.state == State.DEPLOYED:
        view["links"]["score"] = f"/api/score/{run.run_id}"
    if redeployable(run):
        view["links"]["deploy"] = f"/api/runs/{run.run_id}/deploy"
    return view


@dataclass(frozen=True)
class RunQuery:
    states: tuple[State, ...] = ()
    limit: int = 100


MAX_RUNS_LIMIT = 1000
_STATES = {s.value: s for s in State}


def run_query(params: Mapping[str, str]) -> RunQuery:
    """`?state=Deployed,Retired&limit=N` checked; 400 says what is wrong."""
    states: list[State] = []
    for word in params["state"].split(",") if "state" in params else ():
        state = _STATES.get(word.strip())
        if state is None:
            raise ApiError(400, "invalid_query", f"state {word[:40]!r} is unknown; use one or more (comma-separated) "
                                                 f"of " + ", ".join(s.value for s in State))
        states.append(state)
    limit = 100
    if "limit" in params:
        raw = params["limit"].strip()
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_RUNS_LIMIT:
            raise ApiError(400, "invalid_query", f"limit must be a whole number from 1 to {MAX_RUNS_LIMIT}")
        limit = int(raw)
    return RunQuery(states=tuple(states), limit=limit)

