"""The streaming validator: one pass over an upload's byte chunks, constant memory, stable issue codes.

`Validator.records` yields each valid record as it goes, so the caller can write train/test in the same pass
(the split is handed in as a function, and its counts are the validator's); `Validator.report()` is the
`ValidationReport`. Faults of the whole file are found from its first 64 KiB (`sniffing.file_fault`) and reported
once, at line 0. Every rule about a record lives in `records.examine_record`. Pure: no Azure SDK, no settings.

Token counts: with the estimate, every record is counted. With a tokenizer, every record whose byte length does
not bound its token count below max_seq_length is counted exactly (so truncation is checked exactly), and of the
others a uniform random sample (about SAMPLE_BYTES of them) gives the distribution and, as tokens per character,
the totals, with their 95% error in the report (`TokenReport.sample`). A tokenizer whose kind has no proven bound
(`shared.tokens`) counts every record. The tokenizer runs in a worker thread, a batch behind the checks.
"""

from __future__ import annotations

import math
import random
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import orjson

from ..tokens import ESTIMATE_METHOD, HEADER_TOKENS, MESSAGE_TOKENS, Estimate, TokenCounter
from .framing import line_batches, prepend
from .records import ROLES, Tally, duplicate_key, examine_record, kind
from .report import Issue, MessagesPerRecord, PerRole, Split, Stats, TokenReport, TokenSample, ValidationReport
from .sniffing import HEAD_BYTES, file_fault, unparsed_line

MIN_RECORDS = 10  # Azure ML's fine-tuning step refuses fewer training rows
SAMPLE_BYTES = 1 << 20  # bytes of records counted for the distribution when the upload is larger (~150 records of
# 6 KB: the tokenizer runs at 4-12 MB/s on two cores, so this keeps its share of a 200 MB pass under a third)
_NEVER = 1 << 62
BATCH_BYTES = 256 << 10  # a tokenizer batch's line bytes at most: its encodings (ids, tokens, masks: ~100 bytes a
# token) stay near 10 MB, so two batches in flight keep validation's peak RSS under 100 MB


def _contents(pending: list[tuple[int, bytes, dict[str, Any], Tally]]) -> list[str]:
    return [m["content"] for _, _, record, _ in pending for m in record["messages"]]


class ValidRecord(NamedTuple):
    """A record that passed: its 1-based line, its line's bytes (no line break, no BOM), the parsed object, its
    token count in the chat format before truncation (-1: not counted, see `TokenReport.records_bounded`) and
    its split ("train"/"test"; "" when not split)."""

    line: int
    raw: bytes
    record: dict[str, Any]
    tokens: int = 0
    split: str = ""


class Validator:
    """Checks one upload in a single streaming pass.

    `records(chunks)` yields each valid record; once it is exhausted, `report()` gives the validation report.
    Memory stays constant whatever the upload size, except the prompt-id set (see `_seen_prompt_ids`).
    With `max_seq_length`, a record longer than it gets the warning `exceeds_max_seq_length` and one whose
    assistant content starts at or past the cut the error `assistant_truncated`. `split(record)` says "train" or
    "test" for each valid record; `test_fraction` is reported with it. `expected_bytes` (the upload's size, when
    known) sets the sampling rate of a tokenizer's counts; unknown, every record is counted.
    """

    def __init__(self, max_record_bytes: int = 1 << 20, max_issues: int = 100, max_invalid_fraction: float = 0.0,
                 min_records: int = MIN_RECORDS, max_seq_length: int | None = None,
                 counter: TokenCounter | None = None, epochs: float | None = None,
                 max_seq_length_source: str = "", token_note: str = "",
                 split: Callable[[dict[str, Any]], str] | None = None, test_fraction: float = 0.0,
                 expected_bytes: int | None = None):
        self.max_record_bytes = max_record_bytes
        self.max_issues = max_issues
        self.max_invalid_fraction = max_invalid_fraction
        self.min_records = min_records
        self.max_seq_length = max_seq_length if max_seq_length and max_seq_length > 0 else None
        self.max_seq_length_source = max_seq_length_source
        self.counter: TokenCounter = counter or Estimate()
        self.token_note = token_note
        self.epochs = epochs
        self.split = split
        self.test_fraction = test_fraction
        self.sample_rate = 1.0 if not expected_bytes or expected_bytes <= SAMPLE_BYTES else SAMPLE_BYTES / expected_bytes
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
        self._counted = 0
        self._splits = {"train": 0, "test": 0}
        # The bounded records (not counted one by one): how many, how many of them train, and the sample's
        # running sums and buckets.
        self._bounded = self._bounded_train = self._sampled = 0
        # The ratio estimate of the records not counted (see `_token_report`): the characters and messages of those
        # records (all; of the train split), and the sample's sums of content tokens y and characters x.
        self._unsampled_chars = self._unsampled_messages = self._train_chars = self._train_messages = 0
        self._sample_y = self._sample_x = self._sample_yy = self._sample_xx = self._sample_xy = 0
        self._sample_buckets: dict[int, int] = {}

    def records(self, chunks: Iterable[bytes]) -> Iterator[ValidRecord]:
        """Consume the upload's byte chunks (any sizes; lines may span chunks) and yield each valid record."""
        if self._started:
            raise RuntimeError("a Validator checks one upload; make a new one for the next")
        self._started = True
        chunks = iter(self._counted_bytes(chunks))
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
        examined = self._examined(line_batches(prepend(head, chunks), self.max_record_bytes))
        if not isinstance(self.counter, Estimate):
            examined = self._tokenized(examined)
        # Each record is tallied and handed on as soon as it is examined, while it is still in the CPU's cache:
        # holding a batch of parsed records (as the tokenizer needs) costs a tenth of the throughput.
        limit = self.max_seq_length or _NEVER
        seen, dumps, new, message_tokens = self._seen_prompt_ids, orjson.dumps, tuple.__new__, MESSAGE_TOKENS
        split, splits = self.split, self._splits
        buckets = self._token_buckets
        msg_min = msg_max = msg_sum = valid = counted = bounded_train = 0
        u_chars = u_msgs = tr_chars = tr_msgs = 0
        t_min = _NEVER
        t_max = t_total = t_trained = t_cut = truncated = 0
        n_sys = n_user = n_asst = c_sys = c_user = c_asst = 0
        part = ""
        try:
            for line_no, raw, record, tally in examined:
                n, ns, nu, na, cs, cu, ca, content_tokens, before, first, _ = tally
                if content_tokens >= 0:
                    tokens = trained = content_tokens + message_tokens * n
                    if tokens > limit:
                        trained = self._truncation(line_no, tokens, before + message_tokens * first + HEADER_TOKENS)
                        if trained is None:
                            continue
                        t_cut += tokens - trained
                        truncated += 1
                else:
                    tokens = trained = -1
                pid = record.get("prompt_id")
                if pid is not None:
                    # Python's 64-bit string hash (keyed per process, cached on the str): a fixed-size key per
                    # distinct prompt id. A collision would only cost a spurious warning.
                    key = hash(pid) if type(pid) is str else hash(dumps(pid))
                    if key in seen:
                        self._warn(line_no, "duplicate_prompt_id", "prompt_id repeats an earlier record's")
                    else:
                        seen.add(key)
                if split is not None:
                    part = split(record)
                    splits[part] += 1
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
                valid += 1
                if tokens >= 0:
                    counted += 1
                    t_total += tokens
                    if part != "test":
                        t_trained += trained
                    if tokens < t_min:
                        t_min = tokens
                    if tokens > t_max:
                        t_max = tokens
                    bucket = tokens if tokens < 1024 else tokens >> (shift := tokens.bit_length() - 10) << shift
                    buckets[bucket] = buckets.get(bucket, 0) + 1
                else:  # not counted: its characters carry the sample's tokens-per-character ratio
                    u_chars += cs + cu + ca
                    u_msgs += n
                    if part != "test":
                        bounded_train += 1
                        tr_chars += cs + cu + ca
                        tr_msgs += n
                # tuple.__new__ skips NamedTuple's Python-level constructor (a third of a microsecond a record).
                yield new(ValidRecord, (line_no, raw, record, tokens, part))
        finally:
            self._valid, self._counted, self._bounded_train = valid, counted, bounded_train
            self._unsampled_chars, self._unsampled_messages = u_chars, u_msgs
            self._train_chars, self._train_messages = tr_chars, tr_msgs
            if valid:
                self._msg_min, self._msg_max, self._msg_sum = msg_min, msg_max, msg_sum
            if counted:
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
                        self._error(line_no, "not_an_object", f"line is {kind(record)}, expected an object")
                        continue
                    errors, warnings, tally = examine(record)
                    # Parsing keeps the last of two equal keys. Every key and string of the line has two unescaped
                    # quotes, so quotes matching twice the parsed keys plus the strings known (each message's role
                    # and content, a string prompt and prompt_id) prove no key was dropped: one single-byte count
                    # (3x cheaper than counting `":` pairs). Else (escaped quotes, strings elsewhere) a key count
                    # short of the line's `":` pairs means one may have been dropped (or a content holds `\":`):
                    # then the exact, slower look.
                    if (tally is None or (line.count(b'"') != 2 * (
                            tally[10] + 2 * tally[0] + (type(record.get("prompt")) is str)
                            + (type(record.get("prompt_id")) is str)) and line.count(b'":') != tally[10])) and not any(
                            c == "too_deeply_nested" for c, _ in errors):
                        dup = duplicate_key(line)
                        if dup is not None:
                            errors = [("duplicate_key", f"key {dup!r} appears twice in one object; JSON readers "
                                                        "keep one of the two silently and datasets.load_dataset"
                                                        "(\"json\") refuses the line: keep one")] + errors
                            tally = None
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
        """The examined records with their content tokens counted by the tokenizer, a batch of records' contents
        in one call: each record that may be longer than max_seq_length, and a uniform sample of the others,
        whose content tokens are -1 (not counted) but for the sample.

        The tokenizer counts a batch in a worker thread while this thread parses and checks the next one (the
        Rust tokenizer releases the GIL while it encodes), so on two cores its time mostly hides behind the
        checks'; at most two batches (`BATCH_BYTES` or `batch_records` each, whichever comes first) are held,
        which bounds the memory of the records waiting and of the tokenizer's encodings."""
        counter = self.counter
        batch = max(1, counter.batch_records)
        limit = self.max_seq_length
        bound_ok = counter.bytes_bound
        rate = self.sample_rate
        draw = random.Random(0).random  # the same file gives the same report
        pending: list[tuple[int, bytes, dict[str, Any], Tally]] = []
        pending_bytes = 0
        sampled: set[int] = set()
        in_flight: tuple[Future, list, set[int]] | None = None
        message_tokens = MESSAGE_TOKENS + counter.bound_extra  # a message's bound: its bytes + these
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatft-tokens") as pool:
            for item in examined:
                _, raw, _, tally = item
                if bound_ok:
                    # Content bytes: the characters when the line is ASCII, else at most the line's bytes
                    # (escapes only lengthen a content) and 4 bytes a character.
                    chars = tally[4] + tally[5] + tally[6]
                    bound = (chars if raw.isascii() else min(len(raw), 4 * chars)) + message_tokens * tally[0]
                    if limit is None or bound <= limit:  # cannot be truncated: counted only when sampled
                        self._bounded += 1
                        if rate < 1.0 and draw() >= rate:
                            yield item[0], raw, item[2], (*tally[:7], -1, -1, *tally[9:])
                            continue
                        sampled.add(item[0])
                pending.append(item)
                pending_bytes += len(raw)
                if len(pending) >= batch or pending_bytes >= BATCH_BYTES:
                    job = (pool.submit(counter.count, _contents(pending)), pending, sampled)
                    if in_flight is not None:  # counted while this batch was read
                        yield from self._counted_batch(*in_flight)
                    in_flight, pending, pending_bytes, sampled = job, [], 0, set()
            if pending:
                job = (pool.submit(counter.count, _contents(pending)), pending, sampled)
                if in_flight is not None:
                    yield from self._counted_batch(*in_flight)
                in_flight = job
            if in_flight is not None:
                yield from self._counted_batch(*in_flight)

    def _counted_batch(self, counting: Future, pending: list[tuple[int, bytes, dict[str, Any], Tally]],
                       sampled: set[int]) -> Iterator[tuple[int, bytes, dict[str, Any], Tally]]:
        counts = counting.result()
        at = 0
        for line_no, raw, record, tally in pending:
            n, first = tally[0], tally[9]
            mine = counts[at:at + n]
            at += n
            content = sum(mine)
            if line_no in sampled:  # a bounded record of the sample: it also stands for the ones not drawn
                tokens = content + MESSAGE_TOKENS * n
                self._sampled += 1
                chars = tally[4] + tally[5] + tally[6]
                self._sample_y += content
                self._sample_x += chars
                self._sample_yy += content * content
                self._sample_xx += chars * chars
                self._sample_xy += content * chars
                bucket = tokens if tokens < 1024 else tokens >> (shift := tokens.bit_length() - 10) << shift
                self._sample_buckets[bucket] = self._sample_buckets.get(bucket, 0) + 1
            yield line_no, raw, record, (*tally[:7], content, sum(mine[:first]), first, tally[10])

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

    def report(self) -> ValidationReport:
        """The validation report. Only meaningful once `records` has been consumed."""
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
        elif self.split is not None and self._splits["train"] == 0:
            file_errors.append(("too_few_records", "every valid record fell into the test split; lower "
                                                   "TEST_FRACTION"))
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
        valid = self._valid
        return ValidationReport(
            ok=not reason, reason=reason, records=records, valid_records=valid, invalid_records=invalid,
            invalid_fraction=round(fraction, 6), max_invalid_fraction=self.max_invalid_fraction,
            blank_lines=self._blank, bytes=self._bytes,
            errors=[Issue(**e) for e in errors[:self.max_issues]],
            warnings=[Issue(**w) for w in sorted(self._warnings, key=lambda issue: issue["line"])],
            error_counts=error_counts, warning_counts=dict(self._warning_counts),
            stats=Stats(messages_per_record=MessagesPerRecord(
                min=self._msg_min, mean=round(self._msg_sum / valid, 3) if valid else None,
                max=self._msg_max if valid else None),
                messages_per_role=PerRole(**self._role_messages), characters_per_role=PerRole(**self._role_chars)),
            tokens=self._token_report(),
            split=Split(**self._splits, test_fraction=self.test_fraction) if self.split is not None else None)

    def _token_report(self) -> TokenReport:
        """Token counts of the valid records: how each was counted, their distribution, what truncation cuts, and
        the tokens trained on per epoch and in all (what GPU time scales with). The records not counted stand in
        the distribution as the sample's buckets, and in the totals by a ratio estimate: their chat-format tokens
        exactly (a fixed count a message) plus their content characters times the sample's content tokens per
        character (Cochran, Sampling Techniques, 3rd ed., ch. 6: tokens follow characters closely, so its error
        is a fraction of the sample mean's), with the 95% interval from the sample's residuals."""
        buckets = dict(self._token_buckets)
        total, trained = self._tokens_total, self._tokens_trained
        unsampled = self._valid - self._counted  # bounded records outside the sample
        sample = None
        if unsampled and self._sampled:
            m, drawn_from = self._sampled, self._bounded
            ratio = self._sample_y / self._sample_x  # content tokens per content character
            # residuals d = y - ratio * x: their variance is the ratio estimate's
            residual_sq = max(0.0, self._sample_yy - 2 * ratio * self._sample_xy + ratio * ratio * self._sample_xx)
            variance = residual_sq / max(1, m - 1)
            error = 1.96 * drawn_from * math.sqrt(variance / m * max(0.0, 1 - m / drawn_from))
            total += round(ratio * self._unsampled_chars) + MESSAGE_TOKENS * self._unsampled_messages
            trained += round(ratio * self._train_chars) + MESSAGE_TOKENS * self._train_messages
            weight = unsampled / m
            for value, count in self._sample_buckets.items():
                buckets[value] = buckets.get(value, 0) + count * weight
            sample = TokenSample(records=m, of_records=drawn_from, rate=round(self.sample_rate, 6),
                                 record_tokens_error_95=round(error),
                                 quantile_rank_error_95=round(1.96 * math.sqrt(0.25 / m), 4))
        ordered = sorted(buckets.items())
        weight_total = sum(c for _, c in ordered)
        return TokenReport(
            method=self.counter.method, note=self.token_note, max_seq_length=self.max_seq_length,
            max_seq_length_source=self.max_seq_length_source, records=self._valid,
            records_counted=self._counted - self._sampled if sample else self._counted,
            records_bounded=self._bounded if sample else 0,
            sample=sample, record_tokens=total,
            min=self._tokens_min, p50=_percentile(ordered, weight_total, 0.50),
            p95=_percentile(ordered, weight_total, 0.95), max=self._tokens_max if self._counted else None,
            histogram=_histogram(ordered), truncated_records=self._truncated, tokens_cut=self._tokens_cut,
            trained_tokens_per_epoch=trained, epochs=self.epochs,
            trained_tokens_total=round(trained * self.epochs) if self.epochs else None)

    def _counted_bytes(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if type(chunk) is not bytes:
                chunk = bytes(chunk)  # a line's view must not see its buffer change under it
            self._bytes += len(chunk)
            yield chunk

    def _unparsed(self, line_no: int, line: bytes, exc: orjson.JSONDecodeError) -> None:
        """Classify a line orjson refused: blank, or its code and plain words (`sniffing.unparsed_line`)."""
        if not line.strip():
            self._blank += 1
            self._warn(line_no, "blank_line", "blank line skipped")
            return
        self._error(line_no, *unparsed_line(line, exc))

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


def validate_chunks(chunks: Iterable[bytes], **limits: Any) -> ValidationReport:
    """Validate an upload given as byte chunks and return the report (limits as for `Validator`)."""
    validator = Validator(**limits)
    for _ in validator.records(chunks):
        pass
    return validator.report()


def _percentile(buckets: list[tuple[int, float]], total: float, q: float) -> int | None:
    """The q-quantile (nearest rank) of the values counted (or weighted) in sorted (value, count) buckets."""
    if not total:
        return None
    rank, seen = max(1.0, math.ceil(q * total - 1e-9)), 0.0
    for value, count in buckets:
        seen += count
        if seen >= rank - 1e-9:
            return value
    return buckets[-1][0]


def _histogram(buckets: list[tuple[int, float]], bins: int = 10) -> list[list[int]]:
    """[low, high, records] rows over powers of two of the token counts (at most `bins` rows): enough to see
    the shape of the distribution in a terminal."""
    if not buckets:
        return []
    rows: dict[int, float] = {}
    for value, count in buckets:
        rows[value.bit_length()] = rows.get(value.bit_length(), 0) + count
    out = [[(1 << b) >> 1, (1 << b) - 1, round(n)] for b, n in sorted(rows.items())]
    while len(out) > bins:  # merge the two smallest neighbours' ranges until it fits
        out[0:2] = [[out[0][0], out[1][1], out[0][2] + out[1][2]]]
    return out


__all__ = ["ESTIMATE_METHOD", "MIN_RECORDS", "ValidRecord", "Validator", "validate_chunks"]
