"""Streaming validation of chat JSONL uploads: one pass over byte chunks, constant memory, stable issue codes.

An upload is one JSON object per line, `{"messages": [{"role", "content"}, ...], "prompt"?, "prompt_id"?}`.
The checks are the ones Azure ML's fine-tuning step applies hours later on GPU (see azure-facts.md), run up front
with a line number and a stable code per problem. `Validator.records` yields each valid record as it goes, so the
caller can split and write train/test in the same pass; `Validator.report()` is the JSON-serialisable report.

Faults of the whole file (not UTF-8, not JSON Lines at all) are found from its first 64 KiB and reported once, at
line 0, instead of one error per line. Every rule about a record lives in `examine_record`, the one function every
record goes through: there is no separate fast path that could disagree with it. Token counts come from
`shared.tokens` (a tokenizer, or the documented estimate).
Pure: no Azure SDK, no settings import; limits are plain arguments.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, BinaryIO, Callable, Iterable, Iterator, NamedTuple

import orjson

from .tokens import ESTIMATE_METHOD, HEADER_TOKENS, MESSAGE_TOKENS, Estimate, TokenCounter

CHUNK_BYTES = 1 << 20  # read size: large chunks keep the per-chunk overhead out of the hot path
HEAD_BYTES = 1 << 16  # how much of the file's start is looked at for file-level faults
HEAD_LINES = 20  # and how many of its non-blank lines at most
MIN_RECORDS = 10  # Azure ML's fine-tuning step refuses fewer training rows
ROLES = ("system", "user", "assistant")
RECORD_KEYS = frozenset({"messages", "prompt", "prompt_id"})
MESSAGE_KEYS = frozenset({"role", "content"})
_record_keys_ok = RECORD_KEYS.issuperset  # a third faster than keys() <= RECORD_KEYS
TOKEN_ESTIMATE = "characters / 4: an estimate, not a tokenizer count"
_BOM = b"\xef\xbb\xbf"

ERROR_CODES = (
    "empty_file", "too_few_records", "not_utf8", "not_json_lines", "invalid_utf8", "invalid_json", "not_an_object",
    "record_too_large", "missing_messages", "too_few_messages", "message_not_object", "missing_role",
    "unrecognized_role", "missing_content", "empty_content", "content_not_string", "system_not_first",
    "no_assistant_message", "assistant_truncated",
)
WARNING_CODES = ("blank_line", "unexpected_key", "trailing_user_message", "roles_not_alternating",
                 "duplicate_prompt_id", "exceeds_max_seq_length")
FILE_CODES = ("empty_file", "too_few_records", "not_utf8", "not_json_lines")  # always at line 0

class ValidRecord(NamedTuple):
    """A record that passed: its 1-based line, its line's bytes (no line break, no BOM), the parsed object and
    its token count in the chat format (by the validator's counter, before truncation)."""

    line: int
    raw: bytes
    record: dict[str, Any]
    tokens: int = 0


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


# What the record tallies of `examine_record` hold, in order.
Tally = tuple[int, int, int, int, int, int, int, int, int, int]
_CONVERT = "; `chatft convert` turns it into chat JSONL"
# Role names of other formats, with what they are, for a message that says how to fix the file.
_FOREIGN_ROLES = {"human": "ShareGPT's", "gpt": "ShareGPT's", "bot": "a chat log's", "model": "Gemini's",
                  "chatgpt": "ShareGPT's", "ai": "a chat log's"}


def examine_record(record: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]], Tally | None]:
    """Every rule about one parsed record, in one pass: its (code, message) errors, its warnings, and, when it has
    no error, its tally `(messages, system, user, assistant messages, system, user, assistant characters,
    estimated content tokens, estimated content tokens before the first assistant message, index of the first
    assistant message)`.

    This is the only place record rules live: every record, plain or not, goes through it, so a rule cannot be
    seen by one path and missed by another. It is written for speed (locals, one loop, lists touched only on a
    problem) because it runs once per record of multi-GB uploads.
    """
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    if not _record_keys_ok(record):
        extra = [k for k in record if k not in RECORD_KEYS]
        warnings.append(("unexpected_key", f"record has key(s) {_names(extra)} besides messages, prompt, "
                                           "prompt_id; training ignores them"))
    messages = record.get("messages")
    if type(messages) is not list:
        errors.append(("missing_messages", _missing_messages(record, messages)))
        return errors, warnings, None
    n = len(messages)
    if n < 2:
        errors.append(("too_few_messages", f"{n} message(s); at least 2 are needed"))
    ns = nu = na = cs = cu = ca = before = 0
    first_assistant = -1
    prev_turn: str | None = None  # the last non-system message's role (None: not a valid role)
    role: str | None = None
    alternating = True
    i = 0
    for message in messages:
        i += 1
        try:  # subscripts: cheaper than get() for the message that has both keys
            role = message["role"]
            content = message["content"]
        except KeyError:
            role = message.get("role")
            content = message.get("content")
        except TypeError:  # only an object (dict) is subscripted by a string
            errors.append(("message_not_object", f"message {i} is {_kind(message)}, expected an object"))
            role = prev_turn = None
            continue
        size = len(content) if type(content) is str and content and not content.isspace() else -1
        # The roles users and assistants use most come first: the common record costs two comparisons a message.
        # A bad content (size -1) is counted too: it is an error, and a record with an error has no tally.
        if role == "assistant":
            if prev_turn == "assistant" and alternating:
                warnings.append(("roles_not_alternating", "two assistant messages in a row"))
                alternating = False
            prev_turn = role
            if first_assistant < 0:
                first_assistant, before = i - 1, cs + cu + ca
            na += 1
            ca += size
        elif role == "user":
            if prev_turn == "user" and alternating:
                warnings.append(("roles_not_alternating", "two user messages in a row"))
                alternating = False
            prev_turn = role
            nu += 1
            cu += size
        elif role == "system":
            if i > 1:
                errors.append(("system_not_first", f"message {i} is a system message; only the first may be"))
            ns += 1
            cs += size
        elif role is None:
            errors.append(("missing_role", f"message {i} has no role" if "role" not in message
                           else f"message {i} role is null"))
            prev_turn = None
        else:
            errors.append(("unrecognized_role", _unrecognized_role(i, role)))
            role = prev_turn = None
        if size < 0:
            if content is None:
                errors.append(("missing_content", f"message {i} has no content" if "content" not in message
                               else f"message {i} content is null"))
            elif type(content) is str:
                errors.append(("empty_content", f"message {i} content is "
                               + ("an empty string" if not content else "only whitespace")))
            else:
                errors.append(("content_not_string", _content_not_string(i, content)))
        # Two keys, both present, are exactly role and content; anything else may hold keys training ignores.
        if len(message) != 2 or role is None or content is None:
            extra = [k for k in message if k not in MESSAGE_KEYS]
            if extra:
                warnings.append(("unexpected_key", f"message {i} has key(s) {_names(extra)} besides role, "
                                                   "content"))
    if n and first_assistant < 0:
        errors.append(("no_assistant_message", "no assistant message: training learns only from assistant "
                                               "messages"))
    if role == "user":
        warnings.append(("trailing_user_message", "last message is from the user; it is not trained on"))
    if errors:
        return errors, warnings, None
    # The estimate's content tokens: ceil(characters / 4) of the whole record and of what precedes the first
    # assistant message (see shared.tokens).
    return errors, warnings, (n, ns, nu, na, cs, cu, ca, (cs + cu + ca + 3) >> 2, (before + 3) >> 2,
                              first_assistant)


def inspect_record(record: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every (code, message) error and warning of one parsed record (see `examine_record`)."""
    errors, warnings, _ = examine_record(record)
    return errors, warnings


class Validator:
    """Checks one upload in a single streaming pass.

    `records(chunks)` yields each valid record; once it is exhausted, `report()` gives the validation report.
    Memory stays constant whatever the upload size, except the prompt-id set (see `_seen_prompt_ids`).

    Tokens: each record is counted with `counter` (default: the estimate of `shared.tokens`). With
    `max_seq_length`, a record longer than it gets the warning `exceeds_max_seq_length` (training truncates it)
    and one whose assistant content starts at or past the cut the error `assistant_truncated` (it would teach
    nothing). `epochs` only feeds the report's training-token figure.
    """

    def __init__(self, max_record_bytes: int = 1 << 20, max_issues: int = 100, max_invalid_fraction: float = 0.0,
                 min_records: int = MIN_RECORDS, max_seq_length: int | None = None,
                 counter: TokenCounter | None = None, epochs: float | None = None,
                 max_seq_length_source: str = ""):
        self.max_record_bytes = max_record_bytes
        self.max_issues = max_issues
        self.max_invalid_fraction = max_invalid_fraction
        self.min_records = min_records
        self.max_seq_length = max_seq_length if max_seq_length and max_seq_length > 0 else None
        self.max_seq_length_source = max_seq_length_source
        self.counter: TokenCounter = counter or Estimate()
        self.epochs = epochs
        self._started = self._finished = False
        self._bytes = self._line_count = self._blank = self._valid = 0
        self._file_error: tuple[str, str] | None = None
        # Called with (line, code, message) for every error of a line, beyond the report's cap (`chatft convert`
        # names every record it leaves out).
        self.on_error: Callable[[int, str, str], None] | None = None
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
        # Token distribution in bounded memory: counts per bucket, exact below 1024 tokens and within 0.1% above.
        self._token_buckets: dict[int, int] = {}
        self._tokens_total = self._tokens_trained = self._tokens_cut = self._truncated = 0
        self._tokens_min: int | None = None
        self._tokens_max = 0

    def records(self, chunks: Iterable[bytes]) -> Iterator[ValidRecord]:
        """Consume the upload's byte chunks (any sizes; lines may span chunks) and yield each valid record."""
        if self._started:
            raise RuntimeError("a Validator checks one upload; make a new one for the next")
        self._started = True
        chunks = iter(self._counted(chunks))
        head = b""
        for chunk in chunks:
            head = head + chunk if head else chunk
            if len(head) >= HEAD_BYTES:
                break
        fault = file_fault(head, len(head) < HEAD_BYTES)
        if fault:
            self._file_error = fault
            for _ in chunks:  # count the bytes; nothing in them is worth a per-line report
                pass
            self._finished = True
            return
        examined = self._examined(self._line_batches(_prepend(head, chunks)))
        if not isinstance(self.counter, Estimate):
            examined = self._tokenized(examined)
        # Each record is tallied and handed on as soon as it is examined, while it is still in the CPU's cache:
        # holding a batch of parsed records (as the tokenizer needs) costs a tenth of the throughput.
        limit = self.max_seq_length or 1 << 62
        seen, dumps, new, message_tokens = self._seen_prompt_ids, orjson.dumps, tuple.__new__, MESSAGE_TOKENS
        buckets = self._token_buckets
        msg_min = msg_max = msg_sum = valid = 0
        t_min = 1 << 62
        t_max = t_total = t_trained = t_cut = truncated = 0
        n_sys = n_user = n_asst = c_sys = c_user = c_asst = 0
        try:
            for line_no, raw, record, tally in examined:
                n, ns, nu, na, cs, cu, ca, content_tokens, before, first = tally
                tokens = trained = content_tokens + message_tokens * n
                if tokens > limit:
                    trained = self._truncation(line_no, tokens, before + message_tokens * first + HEADER_TOKENS)
                    if trained is None:
                        continue
                    t_cut += tokens - trained
                    truncated += 1
                pid = record.get("prompt_id")
                if pid is not None:
                    # Python's 64-bit string hash (keyed per process, cached on the str): a fixed-size key per
                    # distinct prompt id. A collision would only cost a spurious warning.
                    key = hash(pid) if type(pid) is str else hash(dumps(pid))
                    if key in seen:
                        self._warn(line_no, "duplicate_prompt_id", "prompt_id repeats an earlier record's")
                    else:
                        seen.add(key)
                n_sys += ns
                n_user += nu
                n_asst += na
                c_sys += cs
                c_user += cu
                c_asst += ca
                msg_sum += n
                if n > msg_max:
                    msg_max = n
                if n < msg_min or not valid:
                    msg_min = n
                t_total += tokens
                t_trained += trained
                if tokens < t_min:
                    t_min = tokens
                if tokens > t_max:
                    t_max = tokens
                bucket = tokens if tokens < 1024 else tokens >> (shift := tokens.bit_length() - 10) << shift
                buckets[bucket] = buckets.get(bucket, 0) + 1
                valid += 1
                # tuple.__new__ skips NamedTuple's Python-level constructor (a third of a microsecond a record).
                yield new(ValidRecord, (line_no, raw, record, tokens))
        finally:
            self._valid = valid
            if valid:
                self._msg_min, self._msg_max, self._msg_sum = msg_min, msg_max, msg_sum
                self._tokens_min = t_min
            self._tokens_max, self._tokens_total, self._tokens_trained = t_max, t_total, t_trained
            self._tokens_cut, self._truncated = t_cut, truncated
            for role, n, c in (("system", n_sys, c_sys), ("user", n_user, c_user), ("assistant", n_asst, c_asst)):
                self._role_messages[role] += n
                self._role_chars[role] += c
        self._finished = True

    def _examined(self, batches: Iterator[list[bytes | None]]) -> Iterator[tuple[int, bytes, dict[str, Any], Tally]]:
        """Parse and examine each line; report its issues and yield (line, bytes, record, tally) of each record
        that passes `examine_record`."""
        loads, decode_error, examine = orjson.loads, orjson.JSONDecodeError, examine_record
        line_no = 0
        try:
            for lines in batches:
                for line in lines:
                    line_no += 1
                    if line is None:
                        self._error(line_no, "record_too_large", f"line is longer than {self.max_record_bytes} "
                                                                 "bytes (VALIDATION_MAX_RECORD_BYTES); skipped")
                        continue
                    try:
                        record = loads(line)
                    except decode_error as exc:
                        self._unparsed(line_no, line, exc)
                        continue
                    if type(record) is not dict:
                        self._error(line_no, "not_an_object", f"line is {_kind(record)}, expected an object")
                        continue
                    errors, warnings, tally = examine(record)
                    if errors:
                        for code, text in errors:
                            self._error(line_no, code, text)
                    if warnings:
                        for code, text in warnings:
                            self._warn(line_no, code, text)
                    if tally is not None:
                        yield line_no, line, record, tally
        finally:
            self._line_count = line_no

    def _tokenized(self, examined: Iterator[tuple[int, bytes, dict[str, Any], Tally]]
                   ) -> Iterator[tuple[int, bytes, dict[str, Any], Tally]]:
        """The examined records with their content tokens (and those before the first assistant message) counted
        by the tokenizer instead of estimated: a batch of records' contents goes to it in one call."""
        batch = max(1, self.counter.batch_records)
        pending: list[tuple[int, bytes, dict[str, Any], Tally]] = []
        for item in examined:
            pending.append(item)
            if len(pending) >= batch:
                yield from self._counted_batch(pending)
                pending = []
        if pending:
            yield from self._counted_batch(pending)

    def _counted_batch(self, pending: list[tuple[int, bytes, dict[str, Any], Tally]]
                       ) -> Iterator[tuple[int, bytes, dict[str, Any], Tally]]:
        counts = self.counter.count([m["content"] for _, _, record, _ in pending for m in record["messages"]])
        at = 0
        for line_no, raw, record, tally in pending:
            n, first = tally[0], tally[9]
            mine = counts[at:at + n]
            at += n
            yield line_no, raw, record, (*tally[:7], sum(mine), sum(mine[:first]), first)

    def _truncation(self, line: int, tokens: int, start: int) -> int | None:
        """The token budget of a record longer than max_seq_length (`start`: the position of its first assistant
        content token): the error `assistant_truncated` and None when training would cut every assistant token,
        else the warning `exceeds_max_seq_length` and the tokens trained on."""
        limit = self.max_seq_length
        if start >= limit:
            self._error(line, "assistant_truncated",
                        f"{tokens} tokens; the first assistant token is at {start}, past max_seq_length "
                        f"{limit}{self._limit_source()}: training cuts every assistant token, so the record "
                        "teaches nothing")
            return None
        self._warn(line, "exceeds_max_seq_length", f"{tokens} tokens, over max_seq_length {limit}"
                                                   f"{self._limit_source()}: training cuts the last {tokens - limit}")
        return limit

    def _limit_source(self) -> str:
        return f" ({self.max_seq_length_source})" if self.max_seq_length_source else ""

    def report(self) -> dict[str, Any]:
        """The validation report (JSON-serialisable). Only meaningful once `records` has been consumed."""
        if not self._finished:
            raise RuntimeError("report() before the upload was read to its end")
        records = self._line_count - self._blank
        invalid = records - self._valid
        fraction = invalid / records if records else 0.0
        file_errors = []
        if self._file_error:
            file_errors.append(self._file_error)
        elif records == 0:
            file_errors.append(("empty_file", "the upload holds no records"))
        elif self._valid < self.min_records:
            file_errors.append(("too_few_records", f"{self._valid} valid record(s); Azure ML fine-tuning needs at "
                                                   f"least {self.min_records}"))
        error_counts = dict(self._error_counts)
        for code, _ in file_errors:
            error_counts[code] = 1
        # Issues of a batch counted by a tokenizer come after later lines' parse errors: ordered by line here.
        errors = [{"line": 0, "code": c, "message": m} for c, m in file_errors] + sorted(
            self._errors, key=lambda issue: issue["line"])
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
            "warnings": sorted(self._warnings, key=lambda issue: issue["line"]),
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
            "tokens": self._token_report(),
        }

    def _token_report(self) -> dict[str, Any]:
        """Token counts of the valid records: how they were counted, their distribution (min, p50, p95, max and a
        histogram of [low, high, records] rows), what truncation cuts, and the tokens trained on per epoch and in
        all (what GPU time scales with)."""
        buckets = sorted(self._token_buckets.items())
        trained = self._tokens_trained
        return {
            "method": self.counter.method,
            "max_seq_length": self.max_seq_length,
            "max_seq_length_source": self.max_seq_length_source,
            "records": self._valid,
            "total": self._tokens_total,
            "min": self._tokens_min,
            "p50": _percentile(buckets, self._valid, 0.50),
            "p95": _percentile(buckets, self._valid, 0.95),
            "max": self._tokens_max if self._valid else None,
            "histogram": _histogram(buckets),
            "truncated_records": self._truncated,
            "tokens_cut": self._tokens_cut,
            "trained_per_epoch": trained,
            "epochs": self.epochs,
            "trained_total": round(trained * self.epochs) if self.epochs else None,
        }

    def _line_batches(self, chunks: Iterable[bytes]) -> Iterator[list[bytes | None]]:
        """The complete lines of each chunk, in a list (line break and a trailing '\\r' removed); None stands for a
        line over the limit, whose bytes are dropped as they arrive rather than buffered.

        Each line is sliced out of its chunk as its own bytes object: a valid line is kept as it is, with no second
        copy, and no line holds its chunk alive. (`bytes.split` would be one C call, but measured 3x slower here:
        it allocates all of a chunk's lines at once, where slices made and freed one after another reuse memory
        that is still in cache.)"""
        limit = self.max_record_bytes
        tail = bytearray()  # the unfinished line, carried to the next chunk
        skipping = False  # inside a line already known to be too long: drop bytes until its end
        for chunk in _without_bom(chunks):
            find = chunk.find
            end = find(b"\n")
            if end < 0:
                if not skipping:
                    tail += chunk
                    if len(tail) > limit + 1:  # over the limit even without a '\r'
                        skipping = True
                        tail = bytearray()
                continue
            if skipping:
                first = None
                skipping = False
            elif tail:
                tail += memoryview(chunk)[:end]
                first = _within(bytes(tail), limit)
                tail = bytearray()
            else:
                first = _within(chunk[:end], limit)
            lines: list = []
            add = lines.append
            start = end + 1
            while (end := find(b"\n", start)) >= 0:
                add(chunk[start:end])
                start = end + 1
            if lines:
                if b"\r" in chunk:
                    lines = [line[:-1] if line[-1:] == b"\r" else line for line in lines]
                if max(map(len, lines)) > limit:
                    lines = [line if len(line) <= limit else None for line in lines]
            lines.insert(0, first)
            yield lines
            if len(chunk) - start > limit + 1:
                skipping = True
            else:
                tail += memoryview(chunk)[start:]
        if skipping:
            yield [None]
        elif tail:
            yield [_within(bytes(tail), limit)]

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
            self._error(line_no, "invalid_utf8", f"not valid UTF-8 (byte {bad.start + 1} of the line)"
                        + _legacy_encoding_hint(line))
            return
        if "depth limit" in exc.msg:
            self._error(line_no, "invalid_json", "not valid JSON: nested deeper than 1024 levels")
            return
        constant = _nonstandard_constant(text)
        if constant:
            self._error(line_no, "invalid_json", f"not valid JSON: {constant} is not a JSON value (NaN and "
                                                 "Infinity literals are not allowed; use null or a string)")
            return
        self._error(line_no, "invalid_json", f"not valid JSON: {exc.msg} (column {exc.colno})" + _json_hint(text, exc))

    def _error(self, line: int, code: str, message: str) -> None:
        if self.on_error is not None:
            self.on_error(line, code, message)
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


def _within(line: bytes, limit: int) -> bytes | None:
    """The line without a trailing '\\r', or None when that is over `limit` bytes."""
    if line[-1:] == b"\r":
        line = line[:-1]
    return None if len(line) > limit else line


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


def _prepend(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from chunks


# Byte order marks, longest first (UTF-32 LE starts with UTF-16 LE's).
_UNICODE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 LE"), (b"\x00\x00\xfe\xff", "UTF-32 BE"),
                 (b"\xff\xfe", "UTF-16 LE"), (b"\xfe\xff", "UTF-16 BE"))
# Leading bytes of binary formats people upload by mistake: (magic, what it is, what to do).
_MAGIC = ((b"\x1f\x8b", "a gzip-compressed file", "decompress it first (gunzip)"),
          (b"PK\x03\x04", "a ZIP archive (or an .xlsx/.docx, which are ZIP archives)",
           "extract the JSONL file from it; a spreadsheet must be exported to chat JSONL"),
          (b"PAR1", "a Parquet file", "`chatft convert` reads a Hugging Face dataset directory holding it"),
          (b"ARROW1", "an Arrow file", "`chatft convert` reads a Hugging Face dataset directory holding it"),
          (b"BZh", "a bzip2-compressed file", "decompress it first (bunzip2)"),
          (b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it first (unxz)"),
          (b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it first (unzstd)"))


def file_fault(head: bytes, whole: bool) -> tuple[str, str] | None:
    """A fault of the whole file, found from its first bytes (`whole`: `head` is the entire file), as
    (code, message), or None. Codes: `not_utf8` (UTF-16/UTF-32, with or without byte order mark),
    `not_json_lines` (one JSON document, pretty-printed objects, a binary format, plain text)."""
    convert = "; convert it with `iconv -f {0} -t UTF-8 IN > OUT` (or save as UTF-8 without BOM)"
    for bom, name in _UNICODE_BOMS:
        if head.startswith(bom):
            return "not_utf8", (f"the file is {name} with a byte order mark, not UTF-8 (Windows PowerShell's "
                                f"`>` and Out-File write UTF-16)" + convert.format(name.replace(" ", "")))
    # Without a mark: JSON text starts with ASCII, so the NUL bytes around its first characters give the encoding
    # away (the method of RFC 4627 section 3).
    first = head[:4]
    if len(first) == 4 and 0 in first:
        name = {(True, True, True, False): "UTF-32 BE", (False, True, True, True): "UTF-32 LE",
                (True, False, True, False): "UTF-16 BE", (False, True, False, True): "UTF-16 LE"}.get(
            tuple(b == 0 for b in first))
        if name:
            return "not_utf8", (f"the file looks like {name} (NUL bytes between its characters), not UTF-8"
                                + convert.format(name.replace(" ", "")))
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            return "not_json_lines", f"the file is {what}, not JSON Lines: {fix}"
    text = head[3:] if head.startswith(_BOM) else head
    lines = [line for line in text.split(b"\n")[: HEAD_LINES * 4] if line.strip()][:HEAD_LINES]
    if not whole and lines and not text.endswith(b"\n"):
        cut = lines.pop()  # cut by the end of the head: only its start says anything
        if not lines and cut.lstrip().startswith(b"["):
            lines = [cut]  # a one-line JSON array longer than the head
    if not lines:
        return None
    first_line = lines[0].strip()
    if first_line.startswith(b"["):
        shape = _json_shape(first_line) if first_line.endswith(b"]") or len(lines) > 1 or whole else "incomplete"
        only_line = whole and len(lines) == 1
        if shape == "incomplete" or (shape == "array of objects" and only_line):
            return "not_json_lines", ("the file is one JSON array of records (a JSON document), not JSON Lines, "
                                      "which holds one record object per line" + _CONVERT)
        return None
    if first_line.startswith(b"{"):
        if _json_shape(first_line) != "incomplete":
            return None
        # The first line opens an object it does not close. A record broken by one stray line break leaves the
        # next lines whole; pretty-printed JSON (json.dump(indent=...), jq .) leaves none of them an object.
        if any(_json_shape(line.strip()) == "object" for line in lines[1:]):
            return None
        return "not_json_lines", ("the file is pretty-printed JSON (objects spread over several lines, as "
                                  "json.dump(..., indent=2) or jq . write), not JSON Lines, which holds one "
                                  "record object per line" + _CONVERT + " (or `jq -c .`)")
    if not any(line.lstrip()[:1] in (b"{", b"[") for line in lines):
        shown = _show(first_line[:60].decode("utf-8", "replace"))
        comma = b"," in first_line or b"\t" in first_line
        return "not_json_lines", ("the file is not JSON: none of its first lines is a JSON object (the first is "
                                  f"{shown}{'; it looks like CSV/TSV' if comma else ''}). Chat JSONL holds one "
                                  '{"messages": [...]} object per line' + _CONVERT)
    return None


def _json_shape(line: bytes) -> str:
    """"object", "array of objects", "other" (valid JSON of another kind), "incomplete" (valid so far but ends
    early) or "invalid"."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return "incomplete" if exc.pos >= len(line) else "invalid"
    if type(value) is dict:
        return "object"
    if type(value) is list and value and all(type(v) is dict for v in value):
        return "array of objects"
    return "other"


def _legacy_encoding_hint(line: bytes) -> str:
    """For a line that is not UTF-8: the 8-bit encoding it most likely is, and how to convert."""
    try:
        line.decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return ("; it looks like Windows-1252/Latin-1 text: convert the file with "
            "`iconv -f WINDOWS-1252 -t UTF-8 IN > OUT`")


def _json_hint(text: str, exc: orjson.JSONDecodeError) -> str:
    """Plain words for the two commonest ways a line is not JSON."""
    if "content after document" in exc.msg:
        return ": two or more JSON values on one line; put each record on its own line"
    if exc.msg.startswith("unexpected character, expected a string key") and text.lstrip().startswith("{'"):
        return ": single-quoted keys look like a Python dict written with str(); write records with json.dumps"
    if exc.msg == "unexpected end of data":
        return ": the record ends early (a line break inside it? each record must be on one line)"
    return ""


def _missing_messages(record: dict[str, Any], messages: Any) -> str:
    if "messages" in record:
        return f"'messages' is {_kind(messages)}, expected an array of messages"
    keys = record.keys()
    for fields, name in (({"conversations"}, "a ShareGPT record"), ({"instruction", "output"}, "an Alpaca record"),
                         ({"prompt", "completion"}, "a legacy prompt/completion record")):
        if fields <= keys:
            return f"no 'messages' key: this is {name}" + _CONVERT
    return "no 'messages' key"


def _content_not_string(i: int, content: Any) -> str:
    if type(content) is list:
        return (f"message {i} content is an array (of parts, the multimodal shape?); chat fine-tuning takes a "
                f"string" + _CONVERT + " (it joins text parts)")
    return f"message {i} content is {_kind(content)}, expected a non-empty string"


def _unrecognized_role(i: int, role: Any) -> str:
    text = f"message {i} has role {_show(role)}; expected system, user or assistant"
    if type(role) is str:
        plain = role.strip().lower()
        if plain in ROLES:
            return text + " (lower-case, no spaces)"
        if plain in _FOREIGN_ROLES:
            return text + f" ({_FOREIGN_ROLES[plain]} role name" + _CONVERT + ")"
        if plain in ("tool", "function", "developer", "ipython"):
            return text + " (chat fine-tuning here trains on system, user and assistant turns only)"
    return text


def _percentile(buckets: list[tuple[int, int]], total: int, q: float) -> int | None:
    """The q-quantile (nearest rank) of the values counted in sorted (value, count) buckets."""
    if not total:
        return None
    rank, seen = max(1, -(-int(q * total * 1000) // 1000)), 0
    for value, count in buckets:
        seen += count
        if seen >= rank:
            return value
    return buckets[-1][0]


def _histogram(buckets: list[tuple[int, int]], bins: int = 10) -> list[list[int]]:
    """[low, high, records] rows over powers of two of the token counts (at most `bins` rows): enough to see
    the shape of the distribution in a terminal."""
    if not buckets:
        return []
    rows: dict[int, int] = {}
    for value, count in buckets:
        rows[value.bit_length()] = rows.get(value.bit_length(), 0) + count
    out = [[(1 << b) >> 1, (1 << b) - 1, n] for b, n in sorted(rows.items())]
    while len(out) > bins:  # merge the two smallest neighbours' ranges until it fits
        out[0:2] = [[out[0][0], out[1][1], out[0][2] + out[1][2]]]
    return out
