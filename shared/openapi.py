"""The OpenAPI 3.1 document of the HTTP API (`GET /api/openapi.json`): scoring in the Azure ML format, the
OpenAI-compatible routes, run status and redeployment, with every error answer and the function-key security.
The schemas are generated from the wire models of `shared.protocol` (the ones requests are checked with), so the
document and the checks cannot drift apart; this module adds only the paths and what each status means."""

from __future__ import annotations

import functools
from typing import Any

from .run_views import MAX_RUNS_LIMIT, MODEL_REF_PATTERN, RUN_ID_PATTERN
from .ml.naming import LINE_PATTERN
from .runs import State

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
_ACCEPT_ENCODING = {"Accept-Encoding": {"description": "The content codings a request body may use.",
                                       "schema": {"type": "string"}}}
_RUN_HEADER = {"x-chatft-run": {"description": "The run whose endpoint answered.", "schema": {"type": "string"}}}


def _errors(schema: str, *statuses: int) -> dict[str, Any]:
    """Error answers: each status with what it means here."""
    meaning = {
        400: ("The body (or query) is malformed; the message names each problem.", None),
        401: ("No valid function key (header `x-functions-key` or query `code`).", None),
        404: ("No such model, run or model line.", None),
        409: ("The run cannot be deployed again (it is deployed, or has no registered model); or, scoring, the "
              "quality gate held the model (`model_held`: the message gives the reason and how to deploy it anyway); or, a "
              "rollback, the line has no previous deployment kept (`no_previous_deployment`).",
              None),
        410: ("The model's endpoint was retired (deleted when idle) or its deployment failed; the message says how "
              "to deploy it again: `POST /api/runs/{run_id}/deploy`.", None),
        413: ("The body is larger than MAX_REQUEST_BYTES, as sent or once decompressed.", None),
        415: ("The body's `Content-Encoding` (gzip and deflate are read) or its `Content-Type` charset is not "
              "supported; the message names which, and `Accept-Encoding` lists the codings read.", _ACCEPT_ENCODING),
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


def _schemas() -> dict[str, Any]:
    """The component schemas, generated from the wire models (requests as validated, answers as serialized)."""
    from pydantic.json_schema import models_json_schema

    from . import protocol as p

    models = [(m, "validation") for m in (p.ScoreRequest, p.ChatCompletionRequest)]
    models += [(m, "serialization") for m in (p.ScoreAnswer, p.ChatCompletion, p.ModelCard, p.ModelList, p.Error,
                                              p.OpenAIError, p.RunView, p.RunList, p.LineView, p.LineList,
                                              p.Rollback)]
    _, doc = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return doc["$defs"]


def _path_parameter(name: str, pattern: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": f"^{pattern}$"}}


_MODEL = _path_parameter("model", MODEL_REF_PATTERN, "A registered model name, `name:version`, or a run id.")
_RUN_ID = _path_parameter("run_id", RUN_ID_PATTERN, "The run id.")
_LINE = _path_parameter("line", LINE_PATTERN, "The model line (a sanitised line name, e.g. `support-bot`).")


_BODY = ("JSON, UTF-8 unless the `Content-Type` names another charset (e.g. `application/json; charset=latin-1`); "
         "it may be compressed, declared with `Content-Encoding: gzip` or `deflate` (415 for any other). "
         "MAX_REQUEST_BYTES bounds it as sent and once decompressed.")


def _score_operation(named: bool) -> dict[str, Any]:
    return {
        "operationId": "scoreModel" if named else "score",
        "tags": ["scoring"],
        "summary": "Score the named model" if named else "Score the newest deployed model",
        "description": "Forwards the Azure ML scoring request to the endpoint of the run serving the model, with "
                       "the endpoint key and the `azureml-model-deployment` header.",
        **({"parameters": [_MODEL]} if named else {}),
        "requestBody": {"required": True, "description": _BODY,
                        "content": {"application/json": {"schema": _ref("ScoreRequest")}}},
        "responses": {"200": _json(_ref("ScoreAnswer"), "The deployment's JSON as is (chat deployments answer "
                                                         "this shape).", _RUN_HEADER),
                      **_errors("Error", 400, 401, 404, 409, 410, 413, 415, 502, 503, 504)},
    }


def _paths() -> dict[str, Any]:
    openai_errors = _errors("OpenAIError", 400, 401, 404, 409, 410, 413, 415, 502, 503, 504)
    return {
        "/api/score": {"post": _score_operation(named=False)},
        "/api/score/{model}": {"post": _score_operation(named=True)},
        "/api/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion", "tags": ["openai"],
            "summary": "OpenAI-compatible chat completion",
            "requestBody": {"required": True, "description": _BODY,
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
            "responses": {"200": _json(_ref("ModelCard"), "The model."), **_errors("OpenAIError", 401, 404, 503)},
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
            "responses": {"200": _json(_ref("RunView"), "The run."), **_errors("Error", 401, 404)},
        }},
        "/api/runs/{run_id}/deploy": {"post": {
            "operationId": "deployRun", "tags": ["runs"],
            "summary": "Deploy again a run whose endpoint was retired (or whose deployment failed), or deploy a Held "
                       "run anyway",
            "description": "Begins creating a new endpoint for the run's registered model; the run is Deploying "
                           "until it is Deployed (poll `GET /api/runs/{run_id}`). A run the quality gate Held is "
                           "deployed over the gate's decision, and the run records that a person chose to "
                           "(`evaluation.deployed_by_choice`).",
            "parameters": [_RUN_ID],
            "responses": {"202": _json(_ref("RunView"), "Deployment begun; the run is Deploying.",
                                       {"Location": {"description": "The run's status URL.",
                                                     "schema": {"type": "string"}}}),
                          **_errors("Error", 401, 404, 409, 503)},
        }},
        "/api/lines": {"get": {
            "operationId": "listLines", "tags": ["lines"], "summary": "Model lines, with their deployments",
            "responses": {"200": _json(_ref("LineList"), "Every line any run belongs to."),
                          **_errors("Error", 401, 503)},
        }},
        "/api/lines/{line}": {"get": {
            "operationId": "getLine", "tags": ["lines"],
            "summary": "One model line: its endpoint's deployments, their traffic, versions and runs",
            "parameters": [_LINE],
            "responses": {"200": _json(_ref("LineView"), "The line."), **_errors("Error", 401, 404, 503)},
        }},
        "/api/lines/{line}/rollback": {"post": {
            "operationId": "rollbackLine", "tags": ["lines"],
            "summary": "Traffic back to the line's previous deployment while it is kept",
            "description": "The version in service (or its canary in progress) gets 0% and is deleted; the previous "
                           "version, kept at 0% for ROLLOUT_KEEP_PREVIOUS_HOURS after a rollout, takes all traffic "
                           "again. Both runs get a history line. 409 when no previous deployment is kept.",
            "parameters": [_LINE],
            "responses": {"200": _json(_ref("Rollback"), "Rolled back."),
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
        "openapi": "3.1.0",
        "info": {"title": "chatft", "version": VERSION,
                 "description": "Score fine-tuned chat models (Azure ML scoring format or OpenAI-compatible) and "
                                "follow runs from upload to deployment. Every route needs a function key."},
        "tags": [{"name": "scoring"}, {"name": "openai"}, {"name": "runs"}, {"name": "lines"}, {"name": "meta"}],
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
