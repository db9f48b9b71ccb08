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


# Content codings a request body may arrive in (RFC 9110 section 8.4.1): gzip and deflate (zlib format) are what
# HTTP clients send; anything else is refused with 415 and Accept-Encoding, as RFC 9110 section 15.5.16 advises.
_ZLIB_WINDOW = {"gzip": 31, "x-gzip": 31, "deflate": 15}
ACCEPTED_ENCODINGS = "gzip, deflate"
_UTF8 = ("", "utf-8", "utf8", "us-ascii", "ascii")  # charsets whose bytes are UTF-8 JSON as they are


def _header(headers: Mapping[str, str] | None, name: str) -> str:
    """A request header's value by case-insensitive name ("" when absent)."""
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return ""


def _too_large(size: str, max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is {size}; the limit is {max_bytes} bytes (setting "
                                           f"MAX_REQUEST_BYTES)")


def _decompressed(body: bytes, coding: str, max_bytes: int) -> bytes:
    """`body` decoded from one content coding, never more than `max_bytes + 1` bytes of output (a small gzip body
    can inflate to gigabytes); concatenated gzip members are read as one body, as gzip itself does."""
    import zlib

    out, rest = bytearray(), body
    while rest:
        inflater = zlib.decompressobj(_ZLIB_WINDOW[coding])
        try:
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise ApiError(400, "invalid_body", f"the request body is not valid {coding} data (Content-Encoding: "
                                                f"{coding}): {exc}") from None
        if len(out) > max_bytes or inflater.unconsumed_tail:
            raise _too_large(f"over {max_bytes} bytes once decompressed (Content-Encoding: {coding})", max_bytes)
        if not inflater.eof:
            raise ApiError(400, "invalid_body", f"the request body ends inside its {coding} data (Content-Encoding: "
                                                f"{coding}): it was cut short")
        rest = inflater.unused_data if coding != "deflate" else b""
        if coding == "deflate" and inflater.unused_data:
            raise ApiError(400, "invalid_body", "the request body has bytes after its deflate data "
                                                "(Content-Encoding: deflate)")
    return bytes(out)


def _charset(content_type: str) -> str:
    """The `charset` parameter of a Content-Type value, lower case ("" when none), parsed as RFC 9110 says (the
    standard library's MIME header parser: quoted values, case-insensitive names)."""
    if not content_type:
        return ""
    from email.message import Message

    message = Message()
    message["Content-Type"] = content_type
    charset = message.get_param("charset")
    return str(charset).strip().lower() if isinstance(charset, str) else ""


def declares_encoding(headers: Mapping[str, str] | None) -> bool:
    """Whether `headers` declare a body other than plain UTF-8: a Content-Encoding or a non-UTF-8 charset."""
    codings = {c.strip().lower() for c in _header(headers, "content-encoding").split(",") if c.strip()}
    return bool(codings - {"identity"}) or _charset(_header(headers, "content-type")) not in _UTF8


def parse_body(body: bytes, max_bytes: int, headers: Mapping[str, str] | None = None) -> Any:
    """The request body as JSON. Decoded as `headers` declare: `Content-Encoding` gzip or deflate (else 415 naming
    it), then the `Content-Type` charset (UTF-8 when none; an unknown one is 415). 413 beyond `max_bytes`, sent or
    decompressed; 400 when it is not JSON, saying which header would have explained bytes that are not UTF-8."""
    if len(body) > max_bytes:
        raise _too_large(f"{len(body)} bytes", max_bytes)
    codings = [c.strip().lower() for c in _header(headers, "content-encoding").split(",") if c.strip()]
    for coding in reversed(codings):  # the header lists codings in the order they were applied
        if coding == "identity":
            continue
        if coding not in _ZLIB_WINDOW:
            raise ApiError(415, "unsupported_content_encoding",
                           f"Content-Encoding {coding[:40]!r} is not supported: send the body uncompressed or with "
                           f"Content-Encoding gzip or deflate", {"Accept-Encoding": ACCEPTED_ENCODINGS})
        body = _decompressed(body, coding, max_bytes)
    if not body:
        raise ApiError(400, "invalid_body", "the request body is empty; send a JSON object")
    charset = _charset(_header(headers, "content-type"))
    if charset not in _UTF8:
        import codecs

        try:
            codec = codecs.lookup(charset)
        except LookupError:
            raise ApiError(415, "unsupported_charset", f"the Content-Type charset {charset[:40]!r} is unknown: send "
                                                       f"UTF-8 or name a charset such as latin-1") from None
        try:
            text = body.decode(codec.name)
        except UnicodeDecodeError as exc:
            raise ApiError(400, "invalid_body", f"the request body is not valid {charset} (the Content-Type "
                                                f"charset) at byte {exc.start}") from None
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_body", f"the request body is not valid JSON: {exc}") from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_body", _not_json(body, exc, bool(codings))) from None


def _not_json(body: bytes, exc: Exception, compressed: bool) -> str:
    """Why `body` is not JSON, naming the header a client most likely forgot."""
    if body[:2] == b"\x1f\x8b" and not compressed:
        return "the request body is gzip-compressed data: declare it with Content-Encoding: gzip"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (f"the request body is not valid UTF-8 (byte {bad.start}): JSON is UTF-8 (RFC 8259); name another "
                f"charset in Content-Type (e.g. application/json; charset=latin-1), or a compression in "
                f"Content-Encoding")
    return f"the request body is not valid JSON: {exc}"


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
