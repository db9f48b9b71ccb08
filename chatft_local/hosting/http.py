"""HTTP triggers under `/<routePrefix>/<route>` and the Event Grid webhook, served with aiohttp.

Auth as the Functions host: FUNCTION and ADMIN routes and the Event Grid webhook need the function key in the
`x-functions-key` header or the `code` query parameter; ANONYMOUS routes do not. Bodies beyond the size cap get
413 before any function runs.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

import azure.functions as func
from aiohttp import web

from .indexing import FunctionSpec, IndexingError
from .invoker import Invoker
from .keys import key_matches

log = logging.getLogger("chatft.host")

EVENTGRID_PATH = "/runtime/webhooks/eventgrid"
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_CONSTRAINTS = {"int": r"-?\d+", "long": r"-?\d+", "guid": r"[0-9a-fA-F-]{36}", "alpha": r"[A-Za-z]+"}
_PARAMETER = re.compile(r"^\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?(\?)?\}$")


_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          413: "body_too_large", 500: "internal_error"}


def _json_response(status: int, error: str) -> web.Response:
    # The same error shape as the app's own answers, so callers parse one format.
    return web.json_response({"error": {"code": _CODES.get(status, str(status)), "message": error}}, status=status)


def _too_large(max_bytes: int) -> web.Response:
    return _json_response(413, f"request body is larger than {max_bytes} bytes")


def _presented_key(request: web.Request) -> str | None:
    return request.headers.get("x-functions-key") or request.query.get("code")


def aiohttp_paths(prefix: str, route: str) -> list[str]:
    """aiohttp paths for a Functions route template: `{id}`, `{id:int}`, `{*rest}`; an optional `{x?}` (last
    segments only, as in ASP.NET routing) adds the path without it."""
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    paths: list[str] = []
    current = base
    for segment in [s for s in route.strip("/").split("/") if s]:
        match = _PARAMETER.match(segment)
        if match is None:
            if "{" in segment:
                raise ValueError(f"route segment {segment!r} is not supported by the local host")
            current += "/" + segment
            continue
        catch_all, name, constraint, optional = match.groups()
        if optional or catch_all:
            paths.append(current or "/")
        pattern = ".*" if catch_all else _CONSTRAINTS.get(constraint or "", "")
        current += "/{" + name + (":" + pattern if pattern else "") + "}"
    paths.append(current or "/")
    return paths


def to_web_response(result: Any) -> web.Response:
    """Translate what an HTTP function returned (HttpResponse, str/bytes, or None) into an aiohttp response."""
    if result is None:
        return web.Response(status=204)
    if isinstance(result, (str, bytes)):
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"an HTTP function must return func.HttpResponse, not {type(result).__name__}")
    headers = {k: v for k, v in result.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
    if not any(k.lower() == "content-type" for k in headers):
        mimetype = result.mimetype or "text/plain"
        charset = result.charset if mimetype.startswith("text/") else None
        headers["Content-Type"] = f"{mimetype}; charset={charset}" if charset else mimetype
    return web.Response(status=result.status_code, body=result.get_body(), headers=headers)


class HttpFunction:
    """The aiohttp handler of one HTTP-triggered function."""

    def __init__(self, spec: FunctionSpec, invoker: Invoker, key: str, max_request_bytes: int):
        self.spec = spec
        self._invoker = invoker
        self._key = key
        self._max_bytes = max_request_bytes
        self.needs_key = str(spec.trigger.get("authLevel", "FUNCTION")).upper() != "ANONYMOUS"

    async def __call__(self, request: web.Request) -> web.Response:
        if self.needs_key and not key_matches(_presented_key(request), self._key):
            return _json_response(401, "a function key is required (x-functions-key header or code parameter)")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(self._max_bytes)
        req = func.HttpRequest(method=request.method, url=str(request.url), headers=request.headers,
                               params=dict(request.query), route_params=dict(request.match_info), body=body)
        try:
            result = await self._invoker.call_async(self.spec, req, f"{request.method} {request.path}")
        except Exception:  # logged by the invoker; the body says nothing about the failure
            return _json_response(500, "the function failed; see the host log")
        try:
            return to_web_response(result)
        except TypeError as e:
            log.error("%s: %s", self.spec.name, e)
            return _json_response(500, "the function returned something that is not an HTTP response")


def _event(raw: dict[str, Any]) -> func.EventGridEvent:
    event_time = raw.get("eventTime")
    return func.EventGridEvent(
        id=raw["id"],
        data=raw.get("data"),
        topic=raw.get("topic"),
        subject=raw["subject"],
        event_type=raw["eventType"],
        event_time=datetime.fromisoformat(event_time) if event_time else None,
        data_version=raw.get("dataVersion"),
    )


class EventGridWebhook:
    """`POST /runtime/webhooks/eventgrid?functionName=<name>`: Event Grid schema, a JSON array per request."""

    def __init__(self, functions: list[FunctionSpec], invoker: Invoker, key: str, max_request_bytes: int):
        self._functions = {f.name: f for f in functions}
        self._invoker = invoker
        self._key = key
        self._max_bytes = max_request_bytes

    async def __call__(self, request: web.Request) -> web.Response:
        if not key_matches(_presented_key(request), self._key):
            return _json_response(401, "the webhook needs the function key (code parameter or x-functions-key)")
        spec = self._functions.get(request.query.get("functionName", ""))
        if spec is None:
            return _json_response(404, "no Event Grid triggered function of that name")
        try:
            payload = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _too_large(self._max_bytes)
        except ValueError:
            return _json_response(400, "the body is not JSON")
        raw_events = payload if isinstance(payload, list) else [payload]
        try:
            for raw in raw_events:
                if raw.get("eventType") == VALIDATION_EVENT:
                    return web.json_response({"validationResponse": raw["data"]["validationCode"]})
            events = [_event(raw) for raw in raw_events]
        except (KeyError, TypeError, AttributeError, ValueError):
            return _json_response(400, "not Event Grid schema events (id, subject, eventType are required)")
        for event in events:
            try:
                await self._invoker.call_async(spec, event, event.id)
            except Exception:  # 500 makes Event Grid deliver the batch again
                return _json_response(500, "the function failed; the event will be retried")
        return web.Response(status=202)


def build_http_app(functions: list[FunctionSpec], invoker: Invoker, key: str, route_prefix: str,
                   max_request_bytes: int) -> web.Application:
    """The aiohttp application serving every HTTP trigger plus the Event Grid webhook."""
    app = web.Application(client_max_size=max_request_bytes)
    resources: dict[str, web.Resource] = {}
    for spec in functions:
        if spec.trigger_type != "httpTrigger":
            continue
        handler = HttpFunction(spec, invoker, key, max_request_bytes)
        methods = [m.upper() for m in spec.trigger.get("methods") or ALL_METHODS]
        try:
            for path in aiohttp_paths(route_prefix, spec.trigger.get("route") or spec.name):
                if path not in resources:
                    resources[path] = app.router.add_resource(path)
                for method in methods:
                    resources[path].add_route(method, handler)
        except (ValueError, RuntimeError) as e:  # an unsupported template, or a route another function has
            raise IndexingError(f"function {spec.name}: {e}") from None
    grid = [f for f in functions if f.trigger_type == "eventGridTrigger"]
    if grid:
        app.router.add_post(EVENTGRID_PATH, EventGridWebhook(grid, invoker, key, max_request_bytes))
    return app
