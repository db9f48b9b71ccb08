"""Per-upload overrides: typed, allow-listed values read from the uploaded blob's metadata.

An uploader sets e.g. `epochs=2` and `learning_rate=1e-5` as blob metadata; `parse_overrides` turns them into the
pipeline's parameter names and types (plus the app-level keys `base_model`, `keep`, `test_fraction`, `force`), or raises
`OverrideError` listing every problem. Strict on purpose: an unknown or malformed key is a mistake to report before
GPU time is spent, not something to ignore. Pure: no Azure SDK.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .quality_gate import GATES, METRICS
from .values import to_value

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
# Used by the app itself, not passed to the pipeline (the eval_* keys are the quality gate's, shared/quality_gate.py).
APP_KEYS = ("base_model", "keep", "test_fraction", "eval_gate", "eval_metric", "eval_min_improvement", "force",
            "model_line")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class OverrideError(ValueError):
    """Some metadata keys are unknown or malformed; `problems` lists each as {key, code, message}."""

    def __init__(self, problems: list[dict[str, str]]):
        self.problems = problems
        super().__init__("; ".join(p["message"] for p in problems))


@dataclass(frozen=True)
class _Override:
    name: str  # the pipeline's parameter name, or an app-level key
    parse: Callable[[str], Any]  # raises ValueError on a malformed value
    expected: str


def _integer(name: str, low: int, high: int | None = None) -> _Override:
    def parse(raw: str) -> int:
        value = to_value("integer", raw)
        if value < low or (high is not None and value > high):
            raise ValueError(raw)
        return value

    return _Override(name, parse, f"an integer from {low} to {high}" if high is not None
                     else f"an integer of at least {low}")


def _number(name: str, low: float, high: float, low_open: bool, high_open: bool) -> _Override:
    def parse(raw: str) -> float:
        value = to_value("number", raw)
        if value < low or value > high or (low_open and value == low) \
                or (high_open and value == high):
            raise ValueError(raw)
        return value

    lower = f"above {low:g}" if low_open else f"at least {low:g}"
    upper = f"below {high:g}" if high_open else f"at most {high:g}"
    return _Override(name, parse, f"a number {lower} and {upper}")


def _flag(name: str, pipeline_form: bool) -> _Override:
    def parse(raw: str) -> bool | str:
        value = to_value("boolean", raw, flag_words=True)
        # The pipeline's boolean-like inputs are the strings "true"/"false".
        return ("true" if value else "false") if pipeline_form else value

    return _Override(name, parse, "true or false")


def _choice(name: str, choices: tuple[str, ...]) -> _Override:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(raw)
        return raw

    return _Override(name, parse, "one of " + ", ".join(choices))


def _line(raw: str) -> str:
    from .ml.naming import line_name
    from .ml.port import InvalidInput

    try:
        return line_name(raw)
    except InvalidInput:
        raise ValueError(raw) from None


def _model_name(raw: str) -> str:
    if not _MODEL_NAME.fullmatch(raw):
        raise ValueError(raw)
    return raw


# metadata key -> how to read it. Names are the pipeline's where it has the parameter.
OVERRIDES: dict[str, _Override] = {
    "base_model": _Override("base_model", _model_name,
                            "a model name: letters, digits, '.', '_' or '-' (up to 128, starting with a letter "
                            "or digit)"),
    "epochs": _integer("num_train_epochs", 1, 100),
    "learning_rate": _number("learning_rate", 0.0, 1.0, low_open=True, high_open=True),
    "lora_r": _integer("lora_r", 1, 256),
    "lora_alpha": _integer("lora_alpha", 1),
    "lora_dropout": _number("lora_dropout", 0.0, 1.0, low_open=False, high_open=True),
    "max_seq_length": _integer("max_seq_length", 16, 131072),
    "per_device_train_batch_size": _integer("per_device_train_batch_size", 1),
    "gradient_accumulation_steps": _integer("gradient_accumulation_steps", 1),
    "lr_scheduler_type": _choice("lr_scheduler_type", LR_SCHEDULERS),
    "apply_lora": _flag("apply_lora", pipeline_form=True),
    "seed": _integer("seed", 0, 2**32 - 1),
    "keep": _flag("keep", pipeline_form=False),
    # Train even when an earlier run had the same data and settings (shared/duplicates.py).
    "force": _flag("force", pipeline_form=False),
    "test_fraction": _number("test_fraction", 0.0, 1.0, low_open=False, high_open=True),
    "eval_gate": _choice("eval_gate", GATES),
    "eval_metric": _choice("eval_metric", tuple(METRICS)),
    "eval_min_improvement": _number("eval_min_improvement", -1e6, 1e6, low_open=False, high_open=False),
    "model_line": _Override("model_line", _line,
                            "a model line name: letters and digits, other characters become '-' (at most 29 once "
                            "sanitised)"),
}


def parse_overrides(metadata: dict[str, str]) -> dict[str, Any]:
    """Typed overrides from blob metadata, keyed by pipeline parameter (or app-level) name; OverrideError if any
    key is unknown or any value malformed."""
    values: dict[str, Any] = {}
    problems: list[dict[str, str]] = []
    for key, raw in sorted(metadata.items()):
        key = key.lower()  # blob metadata names are case-insensitive
        override = OVERRIDES.get(key)
        if override is None:
            problems.append({"key": key, "code": "unknown_key",
                             "message": f"unknown override {_show(key)}; allowed: {', '.join(sorted(OVERRIDES))}"})
            continue
        try:
            values[override.name] = override.parse(str(raw).strip())
        except ValueError:
            problems.append({"key": key, "code": "malformed_value",
                             "message": f"override {key}={_show(str(raw))} must be {override.expected}"})
    if problems:
        raise OverrideError(problems)
    return values


def _show(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."
