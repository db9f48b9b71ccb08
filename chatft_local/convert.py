"""Turn the training files people have into chat JSONL that `chatft validate` (and so `ingest`) accepts.

Containers (how records are stored), read as streams: JSON Lines (line by line), a JSON array or JSON objects one
after another, pretty-printed or not (with ijson, an incremental parser over a C library, yajl: a large array is
never loaded whole), a Parquet file, and a local Hugging Face dataset directory (`save_to_disk`'s Arrow files via
`datasets.load_from_disk`, memory-mapped; or a folder of Parquet files, read a batch of rows at a time).

Record formats: chat (`messages`, extra keys dropped), ShareGPT (`conversations` of `from`/`value`), Alpaca
(`instruction`/`input`/`output`), and legacy `prompt`/`completion`. Every record that cannot be converted is
reported with its reason; every converted record is then put through the validator itself, so what is written
is exactly what `chatft validate` accepts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

FORMATS = ("auto", "sharegpt", "alpaca", "prompt-completion", "json", "jsonl")
RECORD_FORMATS = {"chat": "chat records", "sharegpt": "ShareGPT records", "alpaca": "Alpaca records",
                  "prompt-completion": "prompt/completion records"}
DETECT_RECORDS = 1000  # records looked at, at most, to find the record format

# Role names of other formats -> ours. ShareGPT's `from` values as the FastChat and Axolotl loaders map them
# (human/user, gpt/chatgpt/bing/bard/assistant, system); `model` is Gemini's.
ROLE_NAMES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
              "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
              "bot": "assistant", "ai": "assistant", "system": "system"}


class ConvertError(Exception):
    """The input cannot be read as any supported container; the message says why and what to do."""


@dataclass
class Source:
    """A stream of (position, record or None, why-not) from one input, and what it was detected as."""

    container: str  # words for a person: "JSON Lines", "a JSON array", ...
    unit: str  # what a position counts: "line", "item", "row"
    items: Iterator[tuple[int, Any, str]]


@dataclass
class Outcome:
    container: str = ""
    record_format: str = ""
    read: int = 0
    written: int = 0
    dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    removed_keys: dict[str, int] = field(default_factory=dict)

    @property
    def detected(self) -> str:
        return f"{self.container} of {RECORD_FORMATS.get(self.record_format, self.record_format)}"


# ------------------------------------------------------------------------------------------------ containers


def open_source(path: Path, container: str = "auto") -> Source:
    """The records of `path` (a file or a dataset directory), streamed. `container`: "auto", "json" (a JSON
    document) or "jsonl"."""
    if path.is_dir():
        return _dataset_dir(path)
    if not path.is_file():
        raise ConvertError(f"{path} is neither a file nor a directory")
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    if head.startswith(b"PAR1"):
        return _parquet([path], "a Parquet file")
    text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    from shared.validation import file_fault

    fault = file_fault(head, len(head) < 1 << 16)
    if fault and fault[0] == "not_utf8":
        raise ConvertError(fault[1])
    first = text.lstrip()[:1]
    if container == "jsonl" or (container == "auto" and first == b"{" and _first_line_is_object(text)):
        return Source("JSON Lines", "line", _jsonl(path))
    if container == "auto" and _header_then_objects(text):
        return Source("JSON Lines after a header line", "line", _jsonl(path))
    if first == b"[":
        return Source("a JSON array", "item", _json_items(path, "item", multiple=False))
    if first == b"{":
        return Source("JSON objects over several lines", "object", _json_items(path, "", multiple=True))
    raise ConvertError(f"{path} is not JSON, JSON Lines, Parquet or a dataset directory (it starts with "
                       f"{text[:20]!r})")


def _first_line_is_object(text: bytes) -> bool:
    line = text.lstrip().split(b"\n", 1)[0]
    try:
        return type(orjson.loads(line)) is dict
    except orjson.JSONDecodeError:
        return False


def _header_then_objects(text: bytes) -> bool:
    """A first line that is not JSON (a CSV-style header, a title) followed by lines of JSON objects."""
    lines = [line for line in text.split(b"\n")[:6] if line.strip()]
    return len(lines) >= 2 and not _first_line_is_object(lines[0]) and lines[0].lstrip()[:1] not in (b"[", b"{") \
        and all(_first_line_is_object(line) for line in lines[1:-1] or lines[1:])


def _jsonl(path: Path) -> Iterator[tuple[int, Any, str]]:
    from shared.validation.sniffing import unparsed_line

    with open(path, "rb") as stream:
        for number, line in enumerate(stream, 1):  # one line in memory at a time
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line), ""
            except orjson.JSONDecodeError as exc:
                if number == 1 and line.lstrip()[:1] not in (b"{", b"["):
                    yield number, None, ("header_line: line 1 is not a JSON record (a header or title line?); "
                                         "left out")
                    continue
                code, message = unparsed_line(line.rstrip(b"\r\n"), exc)
                yield number, None, f"{code}: {message}"


def _json_items(path: Path, prefix: str, multiple: bool) -> Iterator[tuple[int, Any, str]]:
    import ijson

    with open(path, "rb") as stream:
        if stream.read(3) != b"\xef\xbb\xbf":
            stream.seek(0)
        items = ijson.items(stream, prefix, multiple_values=multiple, use_float=True)
        number = 0
        try:
            for number, item in enumerate(items, 1):
                yield number, item, ""
        except ijson.JSONError as exc:
            # A parse error ends the document: what follows cannot be located reliably, so it is one reason.
            yield number + 1, None, f"invalid_json: not valid JSON from here on ({exc}); the rest of the file is not read"


def _dataset_dir(path: Path) -> Source:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        from datasets import DatasetDict, load_from_disk

        dataset = load_from_disk(str(path))  # memory-mapped Arrow: rows are read as iterated
        name = "a Hugging Face dataset"
        if isinstance(dataset, DatasetDict):
            splits = list(dataset)
            split = next((s for s in ("train_sft", "train") if s in dataset), splits[0])
            name += f" (split {split} of {', '.join(splits)})"
            dataset = dataset[split]
        return Source(name, "row", ((i, row, "") for i, row in enumerate(dataset, 1)))
    files = sorted(path.rglob("*.parquet"))
    if files:
        return _parquet(files, f"a Parquet dataset ({len(files)} file(s))")
    arrows = sorted(path.rglob("*.arrow"))
    if arrows:  # Arrow files without save_to_disk's state.json (the datasets cache's layout)
        from datasets import Dataset

        def rows() -> Iterator[tuple[int, Any, str]]:
            number = 0
            for file in arrows:
                for row in Dataset.from_file(str(file)):  # memory-mapped
                    number += 1
                    yield number, row, ""

        return Source(f"an Arrow dataset ({len(arrows)} file(s))", "row", rows())
    raise ConvertError(f"{path} is a directory without a saved Hugging Face dataset (dataset_dict.json or "
                       "state.json, as save_to_disk writes), Parquet or Arrow files")


def _parquet(files: list[Path], name: str) -> Source:
    def rows() -> Iterator[tuple[int, Any, str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        number = 0
        for file in files:
            try:
                batches = pq.ParquetFile(file).iter_batches(batch_size=1024)  # a batch of rows in memory
                for batch in batches:
                    for row in batch.to_pylist():
                        number += 1
                        yield number, row, ""
            except pa.ArrowException as exc:  # e.g. "PAR1" and nothing after it: no footer
                raise ConvertError(f"{file} starts like a Parquet file but cannot be read as one"
                                   f"{f' (after row {number})' if number else ''}: {exc}") from None

    return Source(name, "row", rows())


# ------------------------------------------------------------------------------------------------ records


def detect_format(record: Any) -> str | None:
    """The record format of one record, or None when it has none of the known shapes."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "chat"
    if "conversations" in record or "conversation" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    return None


class Dropped(Exception):
    """This record cannot be converted: `code` names the kind, the message says what and where."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def _text(value: Any, where: str) -> str:
    """A message's text: a string, a number (an Alpaca answer such as 42, written as JSON writes it), or an array
    of text parts (OpenAI's multimodal shape) joined by line breaks."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Dropped("non_text_part", f"{where} has a {kind} part; chat fine-tuning takes text only")
        return "\n".join(texts)
    if value is None:
        raise Dropped("no_text", f"{where} has no text")
    raise Dropped("not_text", f"{where} is a {type(value).__name__}, not text")


def _role(value: Any, where: str) -> str:
    role = ROLE_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
    if role is None:
        raise Dropped("unsupported_role", f"{where} has role {value!r}; only system, user and assistant turns can "
                      "be trained on")
    return role


def _keep_ids(record: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    pid = record.get("prompt_id", record.get("id"))
    if isinstance(pid, (str, int)) and not isinstance(pid, bool) and pid != "":
        out["prompt_id"] = str(pid)
    return out


def from_chat(record: dict[str, Any]) -> dict[str, Any]:
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise Dropped("no_messages", "'messages' is not an array")
    out = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise Dropped("not_an_object", f"message {i} is not an object")
        out.append({"role": _role(message.get("role"), f"message {i}"),
                    "content": _text(message.get("content"), f"message {i}")})
    result: dict[str, Any] = {"messages": out}
    if isinstance(record.get("prompt"), str):
        result["prompt"] = record["prompt"]
    return _keep_ids(record, result)


def from_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    turns = record.get("conversations", record.get("conversation"))
    if not isinstance(turns, list):
        raise Dropped("no_messages", "no 'conversations' array")
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise Dropped("not_an_object", f"turn {i} is not an object")
        messages.append({"role": _role(turn.get("from", turn.get("role")), f"turn {i}"),
                         "content": _text(turn.get("value", turn.get("content")), f"turn {i}")})
    return _keep_ids(record, {"messages": messages})


def from_alpaca(record: dict[str, Any]) -> dict[str, Any]:
    instruction = _text(record.get("instruction"), "'instruction'")
    extra = record.get("input")
    user = instruction if not extra else f"{instruction}\n\n{_text(extra, repr('input'))}"
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    messages += [{"role": "user", "content": user},
                 {"role": "assistant", "content": _text(record.get("output"), "'output'")}]
    return _keep_ids(record, {"prompt": user, "messages": messages})


def from_prompt_completion(record: dict[str, Any]) -> dict[str, Any]:
    # Legacy completion data often pads the completion with a leading space (the old OpenAI guidance): trimmed.
    prompt = _text(record.get("prompt"), "'prompt'").strip()
    completion = _text(record.get("completion"), "'completion'").strip()
    return _keep_ids(record, {"prompt": prompt, "messages": [{"role": "user", "content": prompt},
                                                             {"role": "assistant", "content": completion}]})


CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "chat": from_chat, "sharegpt": from_sharegpt, "alpaca": from_alpaca, "prompt-completion": from_prompt_completion,
}

# The keys each format reads; any other key of a record is left out (and counted in the outcome).
KNOWN_KEYS = {"chat": {"messages", "prompt", "prompt_id", "id"},
              "sharegpt": {"conversations", "conversation", "system", "id", "prompt_id"},
              "alpaca": {"instruction", "input", "output", "system", "id", "prompt_id"},
              "prompt-completion": {"prompt", "completion", "id", "prompt_id"}}


# ------------------------------------------------------------------------------------------------ the whole


def convert(source: Source, record_format: str | None, write: Callable[[bytes], None], validator: Any,
            on_drop: Callable[[str, int, str], None]) -> Outcome:
    """Convert every record of `source` and write the valid ones (one JSON line each, via `write`).

    `record_format`: one of CONVERTERS, or None to detect it from the first records. `validator`: a fresh
    `shared.validation.Validator`: every converted line goes through it, and only what it yields is written.
    `on_drop(unit, position, reason)` is called for every record left out. Raises ConvertError when no record
    format can be detected."""
    outcome = Outcome(container=source.container)
    items = source.items
    if record_format is None:
        seen = list(itertools.islice(items, DETECT_RECORDS))
        record_format = next((f for _, r, _ in seen if (f := detect_format(r))), None)
        if record_format is None:
            keys = next((sorted(r)[:8] for _, r, _ in seen if isinstance(r, dict)), None)
            raise ConvertError("no known record format in the first records (keys: "
                               f"{', '.join(keys) if keys is not None else 'no objects'}); use --from")
        items = itertools.chain(seen, items)
    outcome.record_format = record_format
    converter = CONVERTERS[record_format]
    known = KNOWN_KEYS[record_format]
    # Output line -> input position, for the lines the validator has not yet passed or refused: a window as
    # long as its batch, so memory stays constant.
    window: dict[int, int] = {}
    lines = itertools.count(1)

    def drop(position: int, reason: str) -> None:
        outcome.dropped += 1
        key = reason.split(":", 1)[0]
        outcome.reasons[key] = outcome.reasons.get(key, 0) + 1
        on_drop(source.unit, position, reason)

    def refused(line: int, code: str, message: str) -> None:
        position = window.pop(line, None)
        if position is not None:  # a record with several errors is dropped once, for its first
            drop(position, f"{code}: {message}")

    validator.on_error = refused

    def converted() -> Iterator[bytes]:
        for position, record, problem in items:
            outcome.read += 1
            if record is None:
                drop(position, problem)
                continue
            if not isinstance(record, dict):
                drop(position, f"not_an_object: a {type(record).__name__}, not an object")
                continue
            try:
                out = converter(record)
            except Dropped as why:
                drop(position, str(why))
                continue
            for key in record.keys() - known:
                outcome.removed_keys[key] = outcome.removed_keys.get(key, 0) + 1
            try:
                line = orjson.dumps(out)
            except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate from a JSON document's \ud800
                drop(position, f"not_text: the record's text cannot be written as UTF-8 JSON ({exc})")
                continue
            window[next(lines)] = position
            yield line + b"\n"

    for valid in validator.records(converted()):
        window.pop(valid.line)
        write(valid.raw + b"\n")
        outcome.written += 1
    return outcome
