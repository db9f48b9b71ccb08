"""Streaming validation of chat JSONL uploads: one pass over byte chunks, constant memory, stable issue codes.

An upload is one JSON object per line, `{"messages": [{"role", "content"}, ...], "prompt"?, "prompt_id"?}`.
The checks are the ones Azure ML's fine-tuning step applies hours later on GPU (see azure-facts.md), run up front
with a line number and a stable code per problem. `Validator.records` yields each valid record as it goes, so the
caller can split and write train/test in the same pass; `Validator.report()` is the JSON-serialisable report.
Pure: no Azure SDK, no settings import; limits are plain arguments.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, BinaryIO, Iterable, Iterator, NamedTuple

import orjson

CHUNK_BYTES = 1 << 20  # read size: large chunks keep the per-chunk overhead out of the hot path
MIN_RECORDS = 10  # Azure ML's fine-tuning step refuses fewer training rows
ROLES = ("system", "user", "assistant")
RECORD_KEYS = frozenset({"messages", "prompt", "prompt_id"})
MESSAGE_KEYS = frozenset({"role", "content"})
TOKEN_ESTIMATE = "characters / 4: an estimate, not a tokenizer count"
_BOM = b"\xef\xbb\xbf"

ERROR_CODES = (
    "empty_file", "too_few_records", "invalid_utf8", "invalid_json", "not_an_object", "record_too_large",
    "missing_messages", "too_few_messages", "message_not_object", "missing_role", "unrecognized_role",
    "missing_content", "empty_content", "system_not_first", "no_assistant_message",
)
WARNING_CODES = ("blank_line", "unexpected_key", "trailing_user_message", "roles_not_alternating",
                 "duplicate_prompt_id")


class ValidRecord(NamedTuple):
    """A record that passed: its 1-based line, its line's bytes (no line break, no BOM) and the parsed object."""

    line: int
    raw: bytes
    record: dict[str, Any]


def read_chunks(stream: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Chunks of a binary file object until its end."""
    while chunk := stream.read(size):
        yield chunk


def split_of(record: dict[str, Any], test_fraction: float) -> str:
    """"train" or "test" for a record, stable across processes and machines.

    Hashes `prompt_id` when present (so every copy of a conversation lands on the same side), else the record's
    canonical bytes (sorted keys), with sha256.
    """
    pid = record.get("prompt_id")
    if pid is None or pid == "":
        key = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    else:
        key = pid.encode() if isinstance(pid, str) else orjson.dumps(pid, option=orjson.OPT_SORT_KEYS)
    point = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return "test" if point < test_fraction else "train"


def inspect_record(record: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every (code, message) error and warning of one parsed record; warnings only matter if there is no error."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    extra = [k for k in record if k not in RECORD_KEYS]
    if extra:
        warnings.append(("unexpected_key", f"record has key(s) {_names(extra)} besides messages, prompt, "
                                           "prompt_id; training ignores them"))
    messages = record.get("messages")
    if not isinstance(messages, list):
        errors.append(("missing_messages", "no 'messages' key" if "messages" not in record
                       else f"'messages' is {_kind(messages)}, expected an array of messages"))
        return errors, warnings
    if len(messages) < 2:
        errors.append(("too_few_messages", f"{len(messages)} message(s); at least 2 are needed"))
    roles: list[str | None] = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            errors.append(("message_not_object", f"message {i} is {_kind(message)}, expected an object"))
            roles.append(None)
            continue
        extra = [k for k in message if k not in MESSAGE_KEYS]
        if extra:
            warnings.append(("unexpected_key", f"message {i} has key(s) {_names(extra)} besides role, content"))
        role = message.get("role")
        if role is None:
            errors.append(("missing_role", f"message {i} has no role"))
        elif role not in ROLES:
            errors.append(("unrecognized_role", f"message {i} has role {_show(role)}; expected system, user "
                                                "or assistant"))
            role = None
        elif role == "system" and i > 1:
            errors.append(("system_not_first", f"message {i} is a system message; only the first may be"))
        roles.append(role)
        content = message.get("content")
        if content is None:
            errors.append(("missing_content", f"message {i} has no content"))
        elif not isinstance(content, str) or not content:
            errors.append(("empty_content", f"message {i} content is {_kind(content)}, expected a non-empty "
                                            "string"))
    if messages and "assistant" not in roles:
        errors.append(("no_assistant_message", "no assistant message: training learns only from assistant "
                                               "messages"))
    if roles and roles[-1] == "user":
        warnings.append(("trailing_user_message", "last message is from the user; it is not trained on"))
    turns = [r for r in roles if r != "system"]
    for i in range(1, len(turns)):
        if turns[i] == turns[i - 1] and turns[i] is not None:
            warnings.append(("roles_not_alternating", f"two {turns[i]} messages in a row"))
            break
    return errors, warnings


class Validator:
    """Checks one upload in a single streaming pass.

    `records(chunks)` yields each valid record; once it is exhausted, `report()` gives the validation report.
    Memory stays constant whatever the upload size, except the prompt-id set (see `_seen_prompt_ids`).
    """

    def __init__(self, max_record_bytes: int = 1 << 20, max_issues: int = 100, max_invalid_fraction: float = 0.0,
                 min_records: int = MIN_RECORDS):
        self.max_record_bytes = max_record_bytes
        self.max_issues = max_issues
        self.max_invalid_fraction = max_invalid_fraction
        self.min_records = min_records
        self._started = self._finished = False
        self._bytes = self._line_count = self._blank = self._valid = 0
        self._errors: list[dict[str, Any]] = []
        self._warnings: list[dict[str, Any]] = []
        self._error_counts: dict[str, int] = {}
        self._warning_counts: dict[str, int] = {}
        # Duplicate detection needs memory proportional to the distinct prompt ids: the set holds a 64-bit hash
        # per id (not the id itself), a fixed ~60 bytes each whatever the id's length.
        self._seen_prompt_ids: set[int] = set()
        self._msg_min: int | None = None
        self._msg_max = self._msg_sum = 0
        self._role_messages = dict.fromkeys(ROLES, 0)
        self._role_chars = dict.fromkeys(ROLES, 0)

    def records(self, chunks: Iterable[bytes]) -> Iterator[ValidRecord]:
        """Consume the upload's byte chunks (any sizes; lines may span chunks) and yield each valid record."""
        if self._started:
            raise RuntimeError("a Validator checks one upload; make a new one for the next")
        self._started = True
        loads, decode_error, dumps = orjson.loads, orjson.JSONDecodeError, orjson.dumps
        record_keys, seen, new = RECORD_KEYS, self._seen_prompt_ids, tuple.__new__
        line_no = valid = 0
        msg_min, msg_max, msg_sum = 1 << 62, 0, 0
        n_sys = n_user = n_asst = c_sys = c_user = c_asst = 0
        try:
            for line in self._lines(chunks):
                line_no += 1
                if line is None:
                    self._error(line_no, "record_too_large", f"line is longer than {self.max_record_bytes} bytes "
                                                             "(VALIDATION_MAX_RECORD_BYTES); skipped")
                    continue
                try:
                    record = loads(line)
                except decode_error as exc:
                    self._unparsed(line_no, bytes(line), exc)
                    continue
                if type(record) is not dict:
                    self._error(line_no, "not_an_object", f"line is {_kind(record)}, expected an object")
                    continue
                # Fast path: a clean record (no error, no warning) is checked and tallied inline, in locals;
                # anything unusual goes to `inspect_record`, which says exactly what is wrong.
                messages = record.get("messages")
                clean = type(messages) is list and len(messages) >= 2 and record.keys() <= record_keys
                if clean:
                    prev = None
                    ns = nu = na = cs = cu = ca = 0
                    for message in messages:
                        if type(message) is not dict or len(message) != 2:
                            clean = False
                            break
                        role = message.get("role")
                        content = message.get("content")
                        if role == prev or type(content) is not str or not content:
                            clean = False
                            break
                        if role == "assistant":
                            na += 1
                            ca += len(content)
                        elif role == "user":
                            nu += 1
                            cu += len(content)
                        elif role == "system" and prev is None:
                            ns += 1
                            cs += len(content)
                        else:
                            clean = False
                            break
                        prev = role
                    clean = clean and prev == "assistant"
                if clean:
                    n_sys += ns
                    n_user += nu
                    n_asst += na
                    c_sys += cs
                    c_user += cu
                    c_asst += ca
                    n = len(messages)
                else:
                    errors, warnings = inspect_record(record)
                    if errors:
                        for code, text in errors:
                            self._error(line_no, code, text)
                        continue
                    for code, text in warnings:
                        self._warn(line_no, code, text)
                    n = self._tally(messages)
                msg_sum += n
                if n < msg_min:
                    msg_min = n
                if n > msg_max:
                    msg_max = n
                pid = record.get("prompt_id")
                if pid is not None:
                    # Python's 64-bit string hash (keyed per process, cached on the str): a fixed-size key per
                    # distinct prompt id. A collision would only cost a spurious warning.
                    key = hash(pid) if type(pid) is str else hash(dumps(pid))
                    if key in seen:
                        self._warn(line_no, "duplicate_prompt_id", "prompt_id repeats an earlier record's")
                    else:
                        seen.add(key)
                valid += 1
                # The line is parsed from a view of its chunk; only a valid one is copied out, so the caller holds
                # no view that would keep a whole chunk alive. tuple.__new__ skips NamedTuple's Python-level
                # constructor (a third of a microsecond a record).
                yield new(ValidRecord, (line_no, bytes(line[:-1] if line[-1] == 13 else line), record))
            self._finished = True
        finally:
            self._line_count, self._valid = line_no, valid
            if valid:
                self._msg_min, self._msg_max, self._msg_sum = msg_min, msg_max, msg_sum
            for role, n, c in (("system", n_sys, c_sys), ("user", n_user, c_user), ("assistant", n_asst, c_asst)):
                self._role_messages[role] += n
                self._role_chars[role] += c

    def report(self) -> dict[str, Any]:
        """The validation report (JSON-serialisable). Only meaningful once `records` has been consumed."""
        if not self._finished:
            raise RuntimeError("report() before the upload was read to its end")
        records = self._line_count - self._blank
        invalid = records - self._valid
        fraction = invalid / records if records else 0.0
        file_errors = []
        if records == 0:
            file_errors.append(("empty_file", "the upload holds no records"))
        elif self._valid < self.min_records:
            file_errors.append(("too_few_records", f"{self._valid} valid record(s); Azure ML fine-tuning needs at "
                                                   f"least {self.min_records}"))
        error_counts = dict(self._error_counts)
        for code, _ in file_errors:
            error_counts[code] = 1
        errors = [{"line": 0, "code": c, "message": m} for c, m in file_errors] + self._errors
        if file_errors:
            reason = file_errors[0][1]
        elif fraction > self.max_invalid_fraction:
            reason = (f"{invalid} of {records} records are invalid ({fraction:.2%}), more than "
                      f"VALIDATION_MAX_INVALID_FRACTION allows ({self.max_invalid_fraction:.2%})")
        else:
            reason = ""
        chars = sum(self._role_chars.values())
        return {
            "ok": not reason,
            "reason": reason,
            "records": records,
            "valid_records": self._valid,
            "invalid_records": invalid,
            "invalid_fraction": round(fraction, 6),
            "max_invalid_fraction": self.max_invalid_fraction,
            "blank_lines": self._blank,
            "bytes": self._bytes,
            "errors": errors[:self.max_issues],
            "warnings": list(self._warnings),
            "error_counts": error_counts,
            "warning_counts": dict(self._warning_counts),
            "stats": {
                "messages_per_record": {
                    "min": self._msg_min,
                    "mean": round(self._msg_sum / self._valid, 3) if self._valid else None,
                    "max": self._msg_max if self._valid else None,
                },
                "messages_per_role": dict(self._role_messages),
                "characters_per_role": dict(self._role_chars),
                "estimated_tokens": {"total": chars // 4, **{r: c // 4 for r, c in self._role_chars.items()}},
                "token_estimate": TOKEN_ESTIMATE,
            },
        }

    def _lines(self, chunks: Iterable[bytes]) -> Iterator[memoryview | None]:
        """Each complete line (line break removed) as a view into its chunk, so parsing copies nothing; None
        stands for a line over the limit, whose bytes are dropped as they arrive rather than buffered."""
        limit = self.max_record_bytes
        tail = bytearray()  # the unfinished line, carried to the next chunk
        skipping = False  # inside a line already known to be too long: drop bytes until its end
        for chunk in _without_bom(self._counted(chunks)):
            start = 0
            if skipping or tail:
                end = chunk.find(b"\n")
                if end < 0:
                    if not skipping:
                        tail += chunk
                        skipping = len(tail) > limit + 1  # over the limit even without a '\r'
                        if skipping:
                            tail = bytearray()
                    continue
                if skipping:
                    skipping = False
                    yield None
                else:
                    tail += memoryview(chunk)[:end]
                    yield _within(memoryview(bytes(tail)), limit)
                    tail = bytearray()
                start = end + 1
            view, find = memoryview(chunk), chunk.find
            while (end := find(b"\n", start)) >= 0:
                yield view[start:end] if end - start <= limit else _within(view[start:end], limit)
                start = end + 1
            if len(chunk) - start > limit + 1:
                skipping = True
            else:
                tail += view[start:]
        if skipping:
            yield None
        elif tail:
            yield _within(memoryview(bytes(tail)), limit)

    def _counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if type(chunk) is not bytes:
                chunk = bytes(chunk)  # a line's view must not see its buffer change under it
            self._bytes += len(chunk)
            yield chunk

    def _unparsed(self, line_no: int, line: bytes, exc: orjson.JSONDecodeError) -> None:
        """Classify a line orjson refused: blank, not UTF-8, or not JSON (with the reason in plain words)."""
        if not line.strip():
            self._blank += 1
            self._warn(line_no, "blank_line", "blank line skipped")
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as bad:
            self._error(line_no, "invalid_utf8", f"not valid UTF-8 (byte {bad.start + 1} of the line)")
            return
        if "depth limit" in exc.msg:
            self._error(line_no, "invalid_json", "not valid JSON: nested deeper than 1024 levels")
            return
        constant = _nonstandard_constant(text)
        if constant:
            self._error(line_no, "invalid_json", f"not valid JSON: {constant} is not a JSON value (NaN and "
                                                 "Infinity literals are not allowed; use null or a string)")
            return
        self._error(line_no, "invalid_json", f"not valid JSON: {exc.msg} (column {exc.colno})")

    def _tally(self, messages: list[dict[str, Any]]) -> int:
        for message in messages:
            role = message["role"]
            self._role_messages[role] += 1
            self._role_chars[role] += len(message["content"])
        return len(messages)

    def _error(self, line: int, code: str, message: str) -> None:
        self._error_counts[code] = self._error_counts.get(code, 0) + 1
        if len(self._errors) < self.max_issues:
            self._errors.append({"line": line, "code": code, "message": message})

    def _warn(self, line: int, code: str, message: str) -> None:
        self._warning_counts[code] = self._warning_counts.get(code, 0) + 1
        if len(self._warnings) < self.max_issues:
            self._warnings.append({"line": line, "code": code, "message": message})


def validate_chunks(chunks: Iterable[bytes], **limits: Any) -> dict[str, Any]:
    """Validate an upload given as byte chunks and return the report (limits as for `Validator`)."""
    validator = Validator(**limits)
    for _ in validator.records(chunks):
        pass
    return validator.report()


def _without_bom(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks with a leading UTF-8 byte order mark removed, even when it spans chunks."""
    chunks = iter(chunks)
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(_BOM) or not _BOM.startswith(head):
            break
    if head:
        yield head[len(_BOM):] if head.startswith(_BOM) else head
    yield from chunks


def _within(line: memoryview, limit: int) -> memoryview | None:
    """The line, or None when it is over `limit` bytes (a trailing '\\r' not counted)."""
    return None if len(line) - (line[-1:] == b"\r") > limit else line


class _Constant(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


def _nonstandard_constant(text: str) -> str | None:
    """The NaN/Infinity literal that made the line invalid, if that was the reason (Python's json accepts them)."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except _Constant as found:
        return str(found)
    except (ValueError, RecursionError):
        pass
    return None


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _show(value: Any) -> str:
    shown = repr(value) if isinstance(value, str) else _kind(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _names(keys: list[str]) -> str:
    shown = ", ".join(_show(k) for k in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
