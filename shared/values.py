"""Parameter values as their kind: the one conversion that upload overrides (blob metadata strings), pipeline
parameters (the component spec's forms) and the local trainer all use. Pure."""

from __future__ import annotations

import math
from typing import Any

# Words people type for a flag (blob metadata); the component's boolean-like inputs take only "true"/"false".
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
KINDS = ("integer", "number", "boolean", "string")  # the component spec's input types


def to_value(kind: str, value: Any, flag_words: bool = False) -> Any:
    """`value` as `kind` (one of KINDS): an int, a finite float, a bool or a str.

    Integers take whole numbers in any form (7, 7.0, "7", "7.0"); booleans take bools and "true"/"false" (any case), or with
    `flag_words` every word in TRUE_WORDS / FALSE_WORDS; strings write booleans as "true"/"false" and whole floats without ".0" (an enum such as
    deepspeed_stage "2" given as 2.0). A bool is never a number. Raises ValueError when `value` has no such form.
    """
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in (TRUE_WORDS + FALSE_WORDS if flag_words else ("true", "false")):
            return word in TRUE_WORDS
        raise ValueError(f"{value!r} is not true or false")
    if kind == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    if kind not in ("integer", "number"):
        raise ValueError(f"unknown kind {kind!r}")
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if kind == "integer" and isinstance(value, int):
        return value
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    if kind == "integer":
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    return number
