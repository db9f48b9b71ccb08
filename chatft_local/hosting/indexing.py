"""Indexing a Python v2 function app as the Functions host does: import the module, list its functions once,
resolve `%NAME%` binding expressions, and read the app's `host.json` and `local.settings.json`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import azure.functions as func

# get_functions() builds the index once and raises on a second call, so keep what it returned per app object:
# a second LocalHost in the same process (a restart in a test) reuses it.
_INDEXED: dict[int, tuple[Any, list]] = {}

_EXPRESSION = re.compile(r"%([^%]+)%")


class IndexingError(RuntimeError):
    """The app cannot be served: the message names the function and what is wrong."""


@dataclass(frozen=True)
class FunctionSpec:
    """One function as the host serves it: its trigger binding (expressions resolved) and how to call it."""

    name: str
    fn: Callable[..., Any]
    trigger: dict[str, Any]
    arg: str  # the parameter that receives the trigger
    arg_type: Any  # that parameter's annotation, or None
    wants_context: bool  # the function takes `context` (func.Context), as the worker allows

    @property
    def trigger_type(self) -> str:
        return self.trigger["type"]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


@dataclass(frozen=True)
class IndexedApp:
    functions: list[FunctionSpec]
    directory: Path  # where the app module lives: host.json and local.settings.json are read from here


def read_local_settings(path: str | os.PathLike) -> dict[str, str]:
    """The "Values" of a local.settings.json as strings; {} when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text()).get("Values") or {}
    except (ValueError, AttributeError) as e:
        raise IndexingError(f"{path} is not a JSON object with a \"Values\" object: {e}") from None
    return {str(k): ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in values.items()}


def read_host_json(directory: str | os.PathLike) -> dict[str, Any]:
    """The app's host.json, {} when absent."""
    path = Path(directory) / "host.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise IndexingError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class HostOptions:
    """What the local host takes from host.json (other keys are Azure-only or not emulated)."""

    route_prefix: str = "api"  # extensions.http.routePrefix
    max_dequeue_count: int = 10  # extensions.queues.maxDequeueCount: deliveries before dead-lettering
    retry_seconds: int = 1  # extensions.queues.visibilityTimeout: delay before a failed message or blob retries
    max_concurrent_calls: int = 16  # extensions.serviceBus.maxConcurrentCalls: messages in flight per function

    @classmethod
    def from_host_json(cls, data: Mapping[str, Any]) -> "HostOptions":
        extensions = data.get("extensions") or {}
        http, queues, bus = (extensions.get(k) or {} for k in ("http", "queues", "serviceBus"))
        default = cls()
        return cls(
            route_prefix=str(http.get("routePrefix", default.route_prefix)),
            max_dequeue_count=int(queues.get("maxDequeueCount", default.max_dequeue_count)),
            retry_seconds=(timespan_seconds(queues["visibilityTimeout"]) if "visibilityTimeout" in queues
                           else default.retry_seconds),
            max_concurrent_calls=int(bus.get("maxConcurrentCalls", default.max_concurrent_calls)),
        )


def timespan_seconds(text: str) -> int:
    """Whole seconds of a .NET TimeSpan as host.json writes it: `hh:mm:ss` or `d.hh:mm:ss`."""
    found = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+)(?:\.\d+)?", str(text).strip())
    if found is None:
        raise IndexingError(f"host.json: {text!r} is not a TimeSpan like 00:00:05")
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def binding_lookup(env: Mapping[str, str]) -> Callable[[str], str | None]:
    """App-setting lookup for `%NAME%`: the environment first, then the defaults of `shared.config`."""
    from shared.config import Settings

    defaults = Settings.from_env().binding_values()

    def lookup(name: str) -> str | None:
        value = env.get(name)
        return value if value is not None else defaults.get(name)

    return lookup


def resolve(value: str, lookup: Callable[[str], str | None], where: str) -> str:
    """Replace every `%NAME%` in a binding value; an unknown name is an error naming it."""

    def one(match: re.Match) -> str:
        found = lookup(match.group(1))
        if found is None:
            raise IndexingError(f"{where}: binding expression %{match.group(1)}% has no value; set the app setting "
                                f"{match.group(1)}")
        return found

    return _EXPRESSION.sub(one, value)


def app_directory(module_name: str) -> Path:
    """The directory of the app module, found without importing it (its settings must be loaded first)."""
    if os.getcwd() not in sys.path:  # the real host puts the script root first; `chatft` scripts lack it
        sys.path.insert(0, os.getcwd())
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise IndexingError(f"function app module {module_name} not found (run from the project root)")
    return Path(spec.origin).resolve().parent


def index_app(module_name: str, lookup: Callable[[str], str | None]) -> IndexedApp:
    """Import `module_name`, find its FunctionApp and describe every function; errors name the function."""
    directory = app_directory(module_name)
    module = importlib.import_module(module_name)
    apps = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    if len(apps) != 1:
        raise IndexingError(f"module {module_name} must define exactly one FunctionApp, found {len(apps)}")
    app = apps[0]
    if id(app) not in _INDEXED:
        _INDEXED[id(app)] = (app, app.get_functions())
    functions = [_describe(f, lookup) for f in _INDEXED[id(app)][1]]
    return IndexedApp(functions, directory)


def _describe(function: Any, lookup: Callable[[str], str | None]) -> FunctionSpec:
    name = function.get_function_name()
    bindings = json.loads(function.get_function_json())["bindings"]
    triggers = [b for b in bindings if b["type"].endswith("Trigger")]
    others = [b for b in bindings if not b["type"].endswith("Trigger") and b["type"] != "http"]
    if len(triggers) != 1 or others:
        kinds = ", ".join(b["type"] for b in others) or f"{len(triggers)} triggers"
        raise IndexingError(f"function {name}: the local host serves one trigger and an HTTP result; found {kinds}")
    trigger = {k: resolve(v, lookup, f"function {name}") if isinstance(v, str) else v
               for k, v in triggers[0].items()}
    fn = function.get_user_function()
    try:
        params = inspect.signature(fn, eval_str=True).parameters
    except NameError:  # a string annotation naming something not importable: fall back to the raw text
        params = inspect.signature(fn).parameters
    if trigger["name"] not in params:
        raise IndexingError(f"function {name}: no parameter named {trigger['name']} for its trigger")
    annotation = params[trigger["name"]].annotation
    return FunctionSpec(
        name=name,
        fn=fn,
        trigger=trigger,
        arg=trigger["name"],
        arg_type=None if annotation is inspect.Parameter.empty else annotation,
        wants_context="context" in params,
    )
