"""Scoring translation: checking a scoring request in the Azure ML format, translating an OpenAI Chat Completions
request into one and the deployment's answer back (as a completion or server-sent chunks). The shapes are the
models of `shared.protocol`; this module only maps one onto the other. Pure: no SDK, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson

from .api_errors import ApiError
from .protocol import (CHAT_ROLES, FINISH_REASONS, AssistantMessage, ChatCompletion, ChatCompletionChunk,
                       ChatCompletionRequest, Choice, ChunkChoice, Delta, Problem, ScoreRequest, Usage, parse)

# Headers the local model server adds to its answers (Azure ML deployments do not send them).
PROMPT_TOKENS_HEADER = "x-chatft-prompt-tokens"
COMPLETION_TOKENS_HEADER = "x-chatft-completion-tokens"
FINISH_REASON_HEADER = "x-chatft-finish-reason"


def _invalid(problem: Problem) -> ApiError:
    return ApiError(400, "invalid_body", str(problem), param=problem.param)


def check_score_request(doc: Any) -> ScoreRequest:
    """Check a scoring request in the Azure ML format (the notebook's `input_data` body); 400 names each problem."""
    try:
        return parse(ScoreRequest, doc)
    except Problem as problem:
        raise _invalid(problem) from None


@dataclass(frozen=True)
class Translated:
    """An OpenAI chat request translated: the scoring request to send and what the answer must honour."""

    model: str
    scoring_request: dict[str, Any]
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def chat_request(doc: Any) -> Translated:
    """Translate an OpenAI Chat Completions request into the Azure ML scoring request; 400 names each problem
    (and OpenAI's `param`)."""
    try:
        request = parse(ChatCompletionRequest, doc)
    except Problem as problem:
        raise _invalid(problem) from None
    messages = [{"role": CHAT_ROLES[m.role],
                 "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
                for m in request.messages]
    parameters: dict[str, Any] = {}
    if request.temperature is not None:
        # Sampling at temperature 0 is undefined for the deployments (transformers rejects it): decode greedily.
        parameters["do_sample"] = request.temperature > 0
        if request.temperature > 0:
            parameters["temperature"] = request.temperature
    if request.top_p is not None:
        parameters["top_p"] = request.top_p
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    if max_tokens is not None:
        parameters["max_new_tokens"] = max_tokens
    body = {"input_data": {"input_string": messages, "parameters": parameters}, "params": {}}
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    return Translated(model=request.model, scoring_request=body, stop=stop, stream=bool(request.stream),
                      include_usage=bool(request.stream_options and request.stream_options.include_usage))


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


def chat_completion(request: Translated, answer: Any, headers: Mapping[str, str], completion_id: str,
                    created: int) -> ChatCompletion:
    """The OpenAI `chat.completion` for a deployment's answer; usage and finish reason from the local model
    server's headers when it sends them (`headers` must be case-insensitive, as HTTP headers are)."""
    text, stopped = apply_stop(output_text(answer), request.stop)
    finish = "stop" if stopped else headers.get(FINISH_REASON_HEADER, "stop")
    prompt, generated = _header_int(headers, PROMPT_TOKENS_HEADER), _header_int(headers, COMPLETION_TOKENS_HEADER)
    usage = (Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)
             if prompt is not None and generated is not None else None)
    return ChatCompletion(id=completion_id, created=created, model=request.model, usage=usage,
                          choices=[Choice(message=AssistantMessage(content=text),
                                          finish_reason=finish if finish in FINISH_REASONS else "stop")])


def completion_json(completion: ChatCompletion) -> bytes:
    """A `chat.completion` as JSON (no `usage` key when the deployment reported none)."""
    return orjson.dumps(completion.model_dump(exclude_none=True))


def completion_events(completion: ChatCompletion, include_usage: bool = False) -> bytes:
    """A `chat.completion` as OpenAI's server-sent `chat.completion.chunk` events, ending with `data: [DONE]`."""
    choice = completion.choices[0]
    head = {"id": completion.id, "created": completion.created, "model": completion.model}
    chunks = [ChatCompletionChunk(**head, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))])]
    if choice.message.content:
        chunks.append(ChatCompletionChunk(**head, choices=[ChunkChoice(delta=Delta(content=choice.message.content))]))
    chunks.append(ChatCompletionChunk(**head, choices=[ChunkChoice(delta=Delta(), finish_reason=choice.finish_reason)]))
    docs = [c.model_dump(exclude={"usage"}) for c in chunks]
    for doc in docs:  # a delta names only what it carries
        doc["choices"][0]["delta"] = {k: v for k, v in doc["choices"][0]["delta"].items() if v is not None}
    if include_usage and completion.usage is not None:
        docs.append(ChatCompletionChunk(**head, choices=[], usage=completion.usage).model_dump())
    return b"".join(b"data: " + orjson.dumps(d) + b"\n\n" for d in docs) + b"data: [DONE]\n\n"
