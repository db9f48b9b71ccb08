"""Token counts of chat records: the base model's tokenizer when one is at hand, else a documented estimate.

Training truncates each conversation, rendered in the model's chat format, to `max_seq_length` tokens (from the
right); a record whose assistant text starts past the cut teaches nothing. To say that before any GPU time is
spent, the validator counts each record's tokens with a `TokenCounter`:

- `Estimate` (always available): ceil(characters / 4) of the record's contents, the common rule of thumb for English
  with BPE tokenizers (OpenAI: "one token generally corresponds to ~4 characters of text for common English
  text", https://help.openai.com/en/articles/4936856), plus the chat format's tokens.
- `TokenizerCounter`: the content tokens counted by the model's own fast (Rust) tokenizer, loaded from its
  `tokenizer.json` with the `tokenizers` package alone (no torch, no transformers) and run over batches of
  contents (`encode_batch_fast`, which skips the offsets), plus the chat format's tokens.

The chat format's tokens are a fixed count per message, not the template rendered: Phi-3's format (the default
base model's) wraps each message as `<|role|>\\n` + content + `<|end|>\\n` (4 tokens: 2 special tokens and 2 line
breaks), and the assistant's content starts 2 tokens into its message. Other chat formats (ChatML, Llama 3) spend
3 to 5 tokens a message, so the count is within a few tokens a message of the real one.

Pure: no Azure SDK, no settings import; `tokenizers` is imported only when a tokenizer is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

log = logging.getLogger(__name__)

MESSAGE_TOKENS = 4  # chat-format tokens around each message (Phi-3: `<|role|>`, "\n", `<|end|>`, "\n")
HEADER_TOKENS = 2  # chat-format tokens before a message's content (Phi-3: `<|role|>`, "\n")
ESTIMATE_METHOD = "estimate: ceil(characters / 4) of the contents + 4 chat-format tokens per message"


def estimate_tokens(text: str) -> int:
    """The estimate of one content's tokens: ceil(characters / 4) (the validator inlines this same formula)."""
    return (len(text) + 3) >> 2


class TokenCounter(Protocol):
    """Counts content tokens. `method` says which counter it is (for the report); `count` takes a batch of
    message contents and returns their token counts (chat-format tokens not included), in order."""

    method: str
    batch_records: int  # how many records the validator collects before calling `count`
    exact: bool  # a tokenizer's count (True) or the estimate (False)
    bytes_bound: bool  # verified: never more content tokens than UTF-8 bytes (+ `bound_extra` a content)
    bound_extra: int  # tokens a content may have beyond its UTF-8 bytes, where `bytes_bound`

    def count(self, contents: Sequence[str]) -> list[int]: ...


class Estimate:
    """ceil(characters / 4) per content (see the module docstring for the source of the rule)."""

    method = ESTIMATE_METHOD
    batch_records = 1
    exact = False
    bytes_bound = False
    bound_extra = 0

    def count(self, contents: Sequence[str]) -> list[int]:
        return [estimate_tokens(c) for c in contents]


class TokenizerCounter:
    """Content tokens counted by a Hugging Face fast tokenizer (`tokenizer.json`), in batches.

    Raises `TokenizerUnavailable` when the directory holds no tokenizer.json or `tokenizers` is not installed."""

    exact = True
    bytes_bound = False
    bound_extra = 0
    batch_records = 256  # enough contents per call for the Rust tokenizer to spread them over its threads

    def __init__(self, directory: str | os.PathLike):
        path = Path(directory).expanduser() / "tokenizer.json"
        if not path.is_file():
            raise TokenizerUnavailable(f"{path.parent} has no tokenizer.json")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerUnavailable("the `tokenizers` package is not installed") from None
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # a corrupt or newer-format file: fall back rather than fail validation
            raise TokenizerUnavailable(f"{path} could not be loaded ({type(exc).__name__})") from None
        # encode_batch_fast (tokenizers >= 0.20) skips computing character offsets, which a count does not need.
        self._encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        self.method = f"tokenizer: {path}"
        extra = _bound_extra(self._tokenizer)
        self.bytes_bound, self.bound_extra = extra is not None, extra or 0

    def count(self, contents: Sequence[str]) -> list[int]:
        return [len(e) for e in self._encode(list(contents), add_special_tokens=False)]


# Strings that make a tokenizer spend the most tokens per byte: every byte value, runs of one character, the
# characters a normalizer could expand, and each script's first letters.
_PROBES = ("".join(map(chr, range(256))), "\x00" * 64, " " * 64, "\n" * 64, "ﬁ㎧ǅİẞ", "東京 café — “x” €5 °C",
           "\U0001F600" * 8, "ab" * 64, "<|end|><|user|>")


def _bound_extra(tokenizer: Any) -> int | None:
    """How many tokens a content may have beyond its UTF-8 bytes, proven from the tokenizer's kind; None (count
    every record) for a kind with no proof here. Then checked on probe strings too.

    - Byte-level BPE (GPT-2's scheme, Llama 3's, Qwen's: a `ByteLevel` pre-tokenizer, no normalizer): each BPE
      symbol starts as one byte and merges only join symbols, so tokens <= bytes: 0.
    - SentencePiece-style BPE (Llama 2's and Phi-3's tokenizer.json: normalizer Prepend("▁") and Replace(" ",
      "▁"), no pre-tokenizer, BPE with byte_fallback, "▁" a token): symbols start as the normalized characters,
      a character outside the vocabulary as its UTF-8 bytes (byte_fallback) or one unknown token, so each costs
      at most its bytes; "▁" replaces a 1-byte space at 1 token, and the prepended "▁" costs 1: 1. (Text between
      added tokens is normalized piece by piece, so each piece gets its own "▁"; an added token of 2 or more
      bytes pays for it, which is checked.)
    Normalizers that can lengthen text (NFKC: "ﬁ" -> "fi") and other models are not proven, so return None."""
    import json

    try:
        spec = json.loads(tokenizer.to_str())
    except Exception:  # an unreadable spec: assume nothing
        return None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        return None
    normalizer, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    if normalizer is None and '"ByteLevel"' in json.dumps(pre):
        extra = 0
    elif (pre is None and model.get("byte_fallback") and "\u2581" in (model.get("vocab") or {})
          and _normalizers(normalizer) in ([("Prepend", "\u2581"), ("Replace", " ")],
                                           [("Replace", " "), ("Prepend", "\u2581")])
          and all(len(t.get("content", "").encode()) >= 2 for t in spec.get("added_tokens") or [])):
        extra = 1
    else:
        return None
    encoded = tokenizer.encode_batch(list(_PROBES), add_special_tokens=False)
    return extra if all(len(e) <= len(p.encode()) + extra for e, p in zip(encoded, _PROBES)) else None


def _normalizers(spec: Any) -> list[tuple[str, str]] | None:
    """A normalizer spec as (type, what it prepends or replaces) pairs, when it is only Prepend and
    Replace-of-a-string steps whose replacement is "▁" (one character for one); else None."""
    steps = spec.get("normalizers") if isinstance(spec, dict) and spec.get("type") == "Sequence" else [spec]
    out = []
    for step in steps or []:
        if not isinstance(step, dict):
            return None
        if step.get("type") == "Prepend":
            out.append(("Prepend", step.get("prepend")))
        elif step.get("type") == "Replace" and step.get("content") == "\u2581" \
                and set(step.get("pattern") or {}) == {"String"}:
            out.append(("Replace", step["pattern"]["String"]))
        else:
            return None
    return out


class TokenizerUnavailable(Exception):
    """No usable tokenizer at the given place; the message says why."""


_cache: dict[str, TokenCounter] = {}


def token_counter(tokenizer_dir: str | os.PathLike | None) -> tuple[TokenCounter, str]:
    """The counter for `tokenizer_dir` (cached per process) or the estimate; with a note on why the estimate is
    used when a directory was named but is unusable ("" otherwise)."""
    if not tokenizer_dir:
        return Estimate(), ""
    key = str(tokenizer_dir)
    if key not in _cache:
        try:
            _cache[key] = TokenizerCounter(tokenizer_dir)
        except TokenizerUnavailable as exc:
            log.warning("token counts are estimated: %s", exc)
            return Estimate(), str(exc)
    return _cache[key], ""


class Budget(NamedTuple):
    """What the validator needs for the token budget of one run: the counter, `max_seq_length` (None: unknown,
    truncation not checked) and where it came from, the epochs, and a note when a named tokenizer was unusable."""

    counter: TokenCounter
    max_seq_length: int | None
    max_seq_length_source: str
    epochs: float | None
    note: str = ""


class ModelHints(NamedTuple):
    """What the ML backend tells the token budget about the base model: its tokenizer directory ("" when none is at
    hand), its default training parameters (the `model_specific_defaults` tag), why its tokenizer is not at hand
    ("" when it is, or none was asked for) and the context window its registry entry states (the `textContextWindow`
    tag; None when unknown). A 2-tuple `(directory, defaults)` reads as the first two fields."""

    tokenizer_dir: str = ""
    defaults: Mapping[str, Any] = {}
    note: str = ""
    context_window: int | None = None


def budget(tokenizer_dir: str, overrides: Mapping[str, Any] | None = None,
           hints: ModelHints | tuple | None = None, default_epochs: float | None = None) -> Budget:
    """The token budget of a run.

    Tokenizer: `tokenizer_dir` (the TOKENIZER_DIR setting) when set, else the base model's tokenizer directory
    from `hints` (the local base model's, or the registry model's tokenizer files fetched in Azure), else the
    estimate, with `hints.note` saying why. `max_seq_length`: the upload's override, else the base model's default
    (from `hints`), else the tokenizer's `model_max_length`, else the model's stated context window, else None.
    Epochs: the override (`num_train_epochs`), else the model's default, else `default_epochs` (the notebook's)."""
    overrides = overrides or {}
    hints = ModelHints(*hints) if hints else ModelHints()
    hint_dir, defaults = hints.tokenizer_dir, hints.defaults
    counter, note = token_counter(tokenizer_dir or hint_dir)
    if not counter.exact and not note:
        note = hints.note
    if overrides.get("max_seq_length"):
        limit, source = int(overrides["max_seq_length"]), "the upload's override"
    elif _positive(defaults.get("max_seq_length")):
        limit, source = int(defaults["max_seq_length"]), "the base model's default"
    elif (length := model_max_length(tokenizer_dir or hint_dir)) is not None:
        # The component's max_seq_length defaults to -1, "the model's max length" (chat_completion_pipeline spec,
        # input max_seq_length): the tokenizer's model_max_length.
        limit, source = length, "the base model's max length (tokenizer_config.json)"
    elif _positive(hints.context_window):
        # Without the tokenizer, the registry's statement of the model's context (azureml-assets spec.yaml tag
        # textContextWindow; Phi-3-mini-4k-instruct: 4096, equal to its tokenizer's model_max_length).
        limit, source = int(hints.context_window), "the base model's context window (registry tag textContextWindow)"
    else:
        limit, source = None, ""
    epochs = overrides.get("num_train_epochs") or defaults.get("num_train_epochs") or default_epochs
    return Budget(counter, limit, source, float(epochs) if epochs else None, note)


def model_max_length(tokenizer_dir: str | os.PathLike | None) -> int | None:
    """`model_max_length` of the tokenizer_config.json beside a tokenizer.json, or None (absent, unreadable, or
    transformers' "no limit" sentinel, about 1e30)."""
    if not tokenizer_dir:
        return None
    import json

    try:
        value = json.loads((Path(tokenizer_dir).expanduser() / "tokenizer_config.json").read_text()).get(
            "model_max_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if _positive(value) and value < 1 << 31 else None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
