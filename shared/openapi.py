"""The OpenAPI 3.0 document of the HTTP API (`GET /api/openapi.json`): scoring in the Azure ML format, the
OpenAI-compatible routes, run status and redeployment, with every error answer and the function-key security.
Limits and patterns come from `shared.scoring`, so the document and the checks cannot drift apart."""

from __future__ import annotations

import functools
from typing import Any

from .runs import State
from .scoring import (CHAT_ROLES, FINISH_REASONS, MAX_RUNS_LIMIT, MAX_STOP_SEQUENCES, MAX_TOKENS, MESSAGE_ROLES,
                      MODEL_REF_PATTERN, RUN_ID_PATTERN, UNSUPPORTED)

VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                                "schema": {"type": "string"}}}
_UPSTREAM_STATUS = {"x-chatft-upstream-status": {"description": "The HTTP status the deployment answered.",
                                                 "schema": {"type": "string"}}}
_RUN_HEADER = {"x-chatft-run": {"description": "The run whose endpoint answered.", "schema": {"type": "string"}}}


def _errors(schema: str, *statuses: int) -> dict[str, Any]:
    """Error answers: each status with what it means here."""
    meaning = {
        400: ("The body (or query) is malformed; the message names each problem.", None),
        401: ("No valid function key (header `x-functions-key` or query `code`).", None),
        404: ("No such model or run.", None),
        409: ("The run cannot be deployed again (it is deployed, or has no registered model).", None),
        410: ("The model's endpoint was retired (deleted when idle) or its deployment failed; the message says how "
              "to deploy it again: `POST /api/runs/{run_id}/deploy`.", None),
        413: ("The body is larger than MAX_REQUEST_BYTES.", None),
        502: ("The deployment answered with an error (its status is in `x-chatft-upstream-status` and the message), "
              "could not be reached, or answered without generated text.", _UPSTREAM_STATUS),
        503: ("No model is deployed at all (no model named), the named model is still being deployed, or the run "
              "store / ML workspace could not be read; retry after `Retry-After` seconds.", _RETRY_AFTER),
        504: ("The deployment did not answer within SCORE_TIMEOUT_SECONDS.", None),
    }
    out: dict[str, Any] = {}
    for status in statuses:
        text, headers = meaning[status]
        # 401 comes from the Functions host itself, before the app runs: its body is not the app's.
        out[str(status)] = {"description": text} if status == 401 else _json(_ref(schema), text, headers)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _schemas() -> dict[str, Any]:
    tokens = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}
    text_part = {"type": "object", "required": ["type", "text"],
                 "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}
    return {
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "description": "Stable error code, e.g. model_retired."},
                "message": {"type": "string", "description": "What is wrong and what to do."}}}},
        },
        "OpenAIError": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["message", "type", "code"], "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "enum": ["invalid_request_error", "api_error"]},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string"}}}},
        },
        "Message": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": list(MESSAGE_ROLES)}, "content": {"type": "string"}},
        },
        "ScoreRequest": {
            "type": "object", "required": ["input_data"],
            "description": "The Azure ML chat-completion scoring request, as the fine-tuning notebook sends it. "
                           "Forwarded unchanged to the deployment.",
            "properties": {
                "input_data": {
                    "type": "object", "required": ["input_string"],
                    "properties": {
                        "input_string": {"type": "array", "minItems": 1,
                                         "items": {"anyOf": [_ref("Message"), {"type": "string"}]},
                                         "description": "The conversation (or plain prompts for text models)."},
                        "parameters": {
                            "type": "object",
                            "description": "Generation parameters; others are passed on unchecked.",
                            "properties": {
                                "temperature": {"type": "number", "minimum": 0},
                                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                                "top_k": {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS},
                                "do_sample": {"type": "boolean"},
                                "max_new_tokens": tokens,
                                "repetition_penalty": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                                "return_full_text": {"type": "boolean"},
                            },
                        },
                    },
                },
                "params": {"type": "object"},
            },
            "example": {"input_data": {"input_string": [{"role": "user", "content": "What is LoRA?"}],
                                       "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True,
                                                      "max_new_tokens": 200}}, "params": {}},
        },
        "ScoreResponse": {
            "description": "The deployment's JSON as is; chat deployments answer {\"output\": \"...\"}.",
            "example": {"output": "LoRA trains small low-rank matrices beside frozen weights."},
        },
        "ChatMessage": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": list(CHAT_ROLES),
                                    "description": "`developer` is treated as `system`; tool messages are refused."},
                           "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": text_part}],
                                       "description": "Text, or text parts (other part types are refused)."}},
        },
        "ChatCompletionRequest": {
            "type": "object", "required": ["model", "messages"],
            "description": "OpenAI Chat Completions, translated to the scoring request: `messages` become "
                           "`input_string`; `temperature` (0 decodes greedily, above 0 samples), `top_p` and "
                           "`max_completion_tokens`/`max_tokens` become generation parameters (left out: the "
                           "model's defaults). `stop` sequences cut the answer. Other OpenAI fields are ignored.",
            "properties": {
                "model": {"type": "string", "minLength": 1,
                          "description": "A registered model name, `name:version`, or a run id."},
                "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
                "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
                "top_p": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
                "max_tokens": _nullable(tokens),
                "max_completion_tokens": _nullable(tokens),
                "stop": _nullable({"anyOf": [{"type": "string", "minLength": 1},
                                             {"type": "array", "maxItems": MAX_STOP_SEQUENCES,
                                              "items": {"type": "string", "minLength": 1}}]}),
                "n": _nullable({"type": "integer", "minimum": 1, "maximum": 1,
                                "description": "Only one choice per request."}),
                "stream": _nullable({"type": "boolean", "description": "Answer as server-sent events (sent "
                                                                       "together once the model has answered)."}),
                "stream_options": _nullable({"type": "object",
                                             "properties": {"include_usage": {"type": "boolean"}}}),
                "response_format": _nullable({"type": "object", "required": ["type"],
                                              "properties": {"type": {"type": "string", "enum": ["text"]}}}),
                "logprobs": _nullable({"type": "boolean", "enum": [False]}),
                **{name: _nullable({"enum": [None], "description": f"Refused when set: {why}."})
                   for name, why in UNSUPPORTED.items()},
            },
        },
        "ChatCompletion": {
            "type": "object", "required": ["id", "object", "created", "model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["chat.completion"]},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {
                    "type": "object", "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {"type": "object", "required": ["role", "content"],
                                    "properties": {"role": {"type": "string", "enum": ["assistant"]},
                                                   "content": {"type": "string"}}},
                        "finish_reason": {"type": "string", "enum": list(FINISH_REASONS)}}}},
                "usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                          "description": "Present when the deployment reports token counts.",
                          "properties": {k: {"type": "integer"} for k in
                                         ("prompt_tokens", "completion_tokens", "total_tokens")}},
            },
        },
        "Model": {
            "type": "object", "required": ["id", "object", "created", "owned_by"],
            "properties": {"id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
                           "created": {"type": "integer"}, "owned_by": {"type": "string"}},
        },
        "ModelList": {
            "type": "object", "required": ["object", "data"],
            "description": "Each registered model name with a Deployed run (its newest run serves it), then the "
                           "run ids of Deployed runs not listed by name.",
            "properties": {"object": {"type": "string", "enum": ["list"]},
                           "data": {"type": "array", "items": _ref("Model")}},
        },
        "Run": {
            "type": "object",
            "required": ["run_id", "state", "created_at", "updated_at", "history", "links"],
            "description": "A run's status. Endpoint keys are never shown.",
            "properties": {
                "run_id": {"type": "string"},
                "state": {"type": "string", "enum": [s.value for s in State]},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"},
                "history": {"type": "array", "items": {
                    "type": "object", "required": ["state", "at"],
                    "properties": {"state": {"type": "string"}, "at": {"type": "string"},
                                   "detail": {"type": "string"},
                                   "kind": {"type": "string", "enum": ["retry"],
                                            "description": "Set on a line that is not a move: `retry`, a step "
                                                           "that failed transiently, tried again after "
                                                           "`delay_seconds`."},
                                   "delay_seconds": {"type": "number"}}}},
                "reconciled_at": _nullable({"type": "string", "description": "When the reconciler last "
                                                                             "checked the run with the backend."}),
                "upload": {"type": "object"},
                "report": {"type": "object", "description": "Validation summary (the full report is "
                                                            "`report_path` in RUNS_CONTAINER)."},
                "job": _nullable({"type": "object", "properties": {"name": {"type": "string"},
                                                                   "status": {"type": "string"}}}),
                "metrics": {"type": "object"},
                "model": _nullable({"type": "object", "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"}, "id": {"type": "string"}}}),
                "endpoint": _nullable({"type": "object", "properties": {
                    "name": {"type": "string"}, "deployment": {"type": "string"},
                    "scoring_uri": {"type": "string"},
                    "last_used_at": {"type": "string", "nullable": True}, "keep": {"type": "boolean"}}}),
                "failure": _nullable({"type": "object", "properties": {"stage": {"type": "string"},
                                                                       "reason": {"type": "string"}}}),
                "links": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "RunList": {
            "type": "object", "required": ["runs", "count"],
            "properties": {"runs": {"type": "array", "items": _ref("Run")}, "count": {"type": "integer"}},
        },
    }


def _path_parameter(name: str, pattern: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": f"^{pattern}$"}}


_MODEL = _path_parameter("model", MODEL_REF_PATTERN, "A registered model name, `name:version`, or a run id.")
_RUN_ID = _path_parameter("run_id", RUN_ID_PATTERN, "The run id.")


def _score_operation(named: bool) -> dict[str, Any]:
    return {
        "operationId": "scoreModel" if named else "score",
        "tags": ["scoring"],
        "summary": "Score the named model" if named else "Score the newest deployed model",
        "description": "Forwards the Azure ML scoring request to the endpoint of the run serving the model, with "
                       "the endpoint key and the `azureml-model-deployment` header.",
        **({"parameters": [_MODEL]} if named else {}),
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ScoreRequest")}}},
        "responses": {"200": _json(_ref("ScoreResponse"), "The deployment's answer.", _RUN_HEADER),
                      **_errors("Error", 400, 401, 404, 410, 413, 502, 503, 504)},
    }


def _paths() -> dict[str, Any]:
    openai_errors = _errors("OpenAIError", 400, 401, 404, 410, 413, 502, 503, 504)
    return {
        "/api/score": {"post": _score_operation(named=False)},
        "/api/score/{model}": {"post": _score_operation(named=True)},
        "/api/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion", "tags": ["openai"],
            "summary": "OpenAI-compatible chat completion",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}}},
            "responses": {
                "200": {"description": "A chat.completion, or with `stream: true` the chat.completion.chunk "
                                       "events ending with `data: [DONE]`.",
                        "headers": _RUN_HEADER,
                        "content": {"application/json": {"schema": _ref("ChatCompletion")},
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                **openai_errors},
        }},
        "/api/v1/models": {"get": {
            "operationId": "listModels", "tags": ["openai"], "summary": "Deployed models (OpenAI list shape)",
            "responses": {"200": _json(_ref("ModelList"), "The deployed models."),
                          **_errors("OpenAIError", 401, 503)},
        }},
        "/api/v1/models/{model}": {"get": {
            "operationId": "retrieveModel", "tags": ["openai"], "summary": "One deployed model",
            "parameters": [_MODEL],
            "responses": {"200": _json(_ref("Model"), "The model."), **_errors("OpenAIError", 401, 404, 503)},
        }},
        "/api/runs": {"get": {
            "operationId": "listRuns", "tags": ["runs"], "summary": "Runs, newest first",
            "parameters": [
                {"name": "state", "in": "query", "required": False, "style": "form", "explode": False,
                 "description": "Only runs in these states (comma-separated).",
                 "schema": {"type": "array", "minItems": 1,
                            "items": {"type": "string", "enum": [s.value for s in State]}}},
                {"name": "limit", "in": "query", "required": False, "description": "At most this many runs.",
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_RUNS_LIMIT, "default": 100}},
            ],
            "responses": {"200": _json(_ref("RunList"), "The runs."), **_errors("Error", 400, 401)},
        }},
        "/api/runs/{run_id}": {"get": {
            "operationId": "getRun", "tags": ["runs"], "summary": "One run's status",
            "parameters": [_RUN_ID],
            "responses": {"200": _json(_ref("Run"), "The run."), **_errors("Error", 401, 404)},
        }},
        "/api/runs/{run_id}/deploy": {"post": {
            "operationId": "deployRun", "tags": ["runs"],
            "summary": "Deploy again a run whose endpoint was retired (or whose deployment failed)",
            "description": "Begins creating a new endpoint for the run's registered model; the run is Deploying "
                           "until it is Deployed (poll `GET /api/runs/{run_id}`).",
            "parameters": [_RUN_ID],
            "responses": {"202": _json(_ref("Run"), "Deployment begun; the run is Deploying.",
                                       {"Location": {"description": "The run's status URL.",
                                                     "schema": {"type": "string"}}}),
                          **_errors("Error", 401, 404, 409, 503)},
        }},
        "/api/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["meta"], "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document."), **_errors("Error", 401)},
        }},
    }


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.0 document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "chatft", "version": VERSION,
                 "description": "Score fine-tuned chat models (Azure ML scoring format or OpenAI-compatible) and "
                                "follow runs from upload to deployment. Every route needs a function key."},
        "tags": [{"name": "scoring"}, {"name": "openai"}, {"name": "runs"}, {"name": "meta"}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "functionCode": {"type": "apiKey", "in": "query", "name": "code"},
            },
        },
        "security": [{"functionKey": []}, {"functionCode": []}],
    }
