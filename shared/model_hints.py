"""What the token budget of a run knows about the base model: its tokenizer, its default training parameters and
its stated context window (`shared.tokens.ModelHints`), asked of the ML backend once per process.

The tokenizer is TOKENIZER_DIR when set (nothing is fetched); else the folder the backend's `data_hints` names (the
local base model's); else the port's `base_model_tokenizer(BASE_MODEL)`: in Azure the registry model's tokenizer
files, read without the weights. When none can be had, the hints say why and the report's counts are the estimate.
`shared.bootstrap` builds one `ModelHintsSource` per set of services. No SDK import.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .ml.port import MLBackend, MLBackendError, TransientError
from .tokens import ModelHints

log = logging.getLogger(__name__)


class ModelHintsSource:
    """`source()` -> ModelHints for BASE_MODEL. Answers are kept for the process, except after a TransientError (a
    throttled registry, a network blip), which the next upload asks again; a refusal (403, no tokenizer) is kept,
    so a fixed role takes effect with the next worker, as settings do (`shared.bootstrap.services`)."""

    def __init__(self, settings: Any, ml: MLBackend):
        self.settings, self.ml = settings, ml
        self._hints: ModelHints | None = None
        self._lock = threading.Lock()

    def __call__(self) -> ModelHints:
        with self._lock:
            if self._hints is None:
                hints, keep = self._ask()
                if not keep:
                    return hints
                self._hints = hints
            return self._hints

    def _ask(self) -> tuple[ModelHints, bool]:
        data_hints = getattr(self.ml, "data_hints", None)
        try:
            raw = data_hints() if data_hints is not None else None
        except MLBackendError as exc:  # only refines the report: ingestion goes on with the estimate
            log.warning("token budget: the base model's defaults are unknown: %s", exc)
            return ModelHints(note=f"the base model's defaults could not be read ({exc})"), False
        hints = ModelHints(*raw) if raw else ModelHints()
        if self.settings.tokenizer_dir or hints.tokenizer_dir:
            return hints, True  # TOKENIZER_DIR wins in `shared.tokens.budget`; nothing to fetch
        try:
            directory = self.ml.base_model_tokenizer(self.settings.base_model)
        except MLBackendError as exc:
            log.warning("token budget: the base model's tokenizer is not at hand, counts are estimated: %s", exc)
            note = f"the base model's tokenizer could not be had ({exc}); set TOKENIZER_DIR to a folder holding it"
            return hints._replace(note=note), not isinstance(exc, TransientError)
        return hints._replace(tokenizer_dir=directory, note=""), True
