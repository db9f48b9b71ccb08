"""The HTTP API's answers other than success, decided in one place: `ApiError` (status, stable code, message,
headers, the OpenAI `param`), the domain exceptions it stands for (`api_error`), and the reply each becomes in
the API's own error shape or OpenAI's (`error_reply`). Pure and light: no pydantic (the run routes use it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

JSON = "application/json"


class ApiError(Exception):
    """An answer other than success: HTTP status, a stable code and a message the caller can act on; `param` is
    the request parameter at fault (OpenAI's errors name it)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = dict(headers or {})


@dataclass
class Reply:
    """What an HTTP function answers: status, body, content type, extra headers."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


def error_body(err: ApiError) -> dict[str, Any]:
    """The API's error shape (`shared.protocol.Error`): `{"error": {"code", "message"}}`."""
    return {"error": {"code": err.code, "message": err.message}}


def openai_error_body(err: ApiError) -> dict[str, Any]:
    """OpenAI's error shape (`shared.protocol.OpenAIError`), for the /v1 routes."""
    kind = "invalid_request_error" if err.status < 500 else "api_error"
    return {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}


def error_reply(err: ApiError, openai: bool = False) -> Reply:
    """The reply for `err`, in OpenAI's error shape for the /v1 routes and the API's own elsewhere."""
    body = openai_error_body(err) if openai else error_body(err)
    return Reply(err.status, orjson.dumps(body), JSON, dict(err.headers))


def json_reply(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps(doc), JSON, dict(headers or {}))


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


def run_not_found(run_id: str) -> ApiError:
    return ApiError(404, "run_not_found", f"no run {run_id[:80]!r}; GET /api/runs lists runs")


def api_error(exc: Exception, run_id: str = "") -> ApiError:
    """The answer for a domain exception a route let through: unknown run 404, not redeployable 409, ML workspace
    unavailable 503. Anything else is re-raised (a bug: the host answers 500 and logs it)."""
    from .ml.port import MLBackendError
    from .orchestration import NotRedeployable
    from .run_store import RunNotFound

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RunNotFound):
        return run_not_found(run_id or str(exc.args[0] if exc.args else ""))
    if isinstance(exc, NotRedeployable):
        return ApiError(409, "not_redeployable", str(exc))
    if isinstance(exc, MLBackendError):
        return ApiError(503, "backend_unavailable", f"the deployment could not be begun: {exc}; try again",
                        {"Retry-After": "30"})
    raise exc
