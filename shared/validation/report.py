"""The validation report, declared once (pydantic v2): what `validation.json` holds, what a run keeps of it (the
same shape with its issue lists capped, `summary`), what `GET /api/runs/{run_id}` serves and what the OpenAPI
document describes (`shared.protocol.RunView.report`). Only `Validator.report()` builds one (and
`ValidationReport.refused` for an upload refused before its data is read)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Issue(_Shape):
    line: int = Field(description="1-based line of the upload; 0 for the whole file.")
    code: str = Field(description="Stable code (README's table).")
    message: str


class MessagesPerRecord(_Shape):
    min: int | None
    mean: float | None
    max: int | None


class PerRole(_Shape):
    system: int = 0
    user: int = 0
    assistant: int = 0


class Stats(_Shape):
    """Of the valid records."""

    messages_per_record: MessagesPerRecord
    messages_per_role: PerRole
    characters_per_role: PerRole = Field(description="Characters (not bytes) of the contents, per role.")


class TokenSample(_Shape):
    """A uniform random sample (each record independently, at `rate`) of the records not counted one by one."""

    records: int = Field(description="Records of the sample, counted exactly.")
    of_records: int = Field(description="Records it was drawn from (`records_bounded` plus the sample).")
    rate: float
    record_tokens_error_95: int = Field(description="Half-width of the 95% confidence interval of "
                                                    "`record_tokens` (and of `trained_tokens_per_epoch`).")
    quantile_rank_error_95: float = Field(description="p50 and p95 are within this fraction of rank of the true "
                                                      "quantiles of the sampled records, at 95% confidence.")


class TokenReport(_Shape):
    """Token counts of the valid records in the chat format (contents by `method`, plus a fixed count of chat-format
    tokens a message). Which records were counted how: `records_counted` one by one (every record whose byte
    length does not bound it below max_seq_length among them, so truncation is checked exactly); the others
    (`records_bounded`) are estimated from `sample`. Without a sample every figure is exact for `method`."""

    method: str = Field(description="The counter: a tokenizer (its file) or the estimate.")
    note: str = Field("", description="Why the estimate is used when a tokenizer was named but is unusable.")
    max_seq_length: int | None = Field(description="None: unknown, truncation not checked.")
    max_seq_length_source: str
    records: int
    records_counted: int = Field(description="Records counted one by one by `method` (outside the sample).")
    records_bounded: int = Field(0, description="Records whose byte length bounds their token count below "
                                                "max_seq_length (a byte-level BPE never makes more tokens than "
                                                "bytes): estimated from `sample`, which is drawn from them.")
    sample: TokenSample | None = None
    record_tokens: int = Field(description="Tokens of every valid record, before truncation.")
    min: int | None = Field(description="Of the records counted.")
    p50: int | None
    p95: int | None
    max: int | None = Field(description="Of the records counted.")
    histogram: list[list[int]] = Field(description="[low, high, records] rows over powers of two.")
    truncated_records: int
    tokens_cut: int = Field(description="Tokens training cuts off the records longer than max_seq_length.")
    trained_tokens_per_epoch: int = Field(description="Tokens training sees per epoch, after truncation: of the "
                                                      "train split when the upload is split, else of every valid "
                                                      "record.")
    epochs: float | None
    trained_tokens_total: int | None = Field(description="`trained_tokens_per_epoch` x `epochs`: what GPU time "
                                                         "scales with.")


class Split(_Shape):
    """Where the valid records went (`TEST_FRACTION`, by a stable hash of `prompt_id`, else of the record)."""

    train: int
    test: int
    test_fraction: float


class ValidationReport(_Shape):
    """The validation report of one upload."""

    ok: bool
    reason: str = Field(description="Why the upload is refused ('' when ok).")
    records: int = Field(description="Non-blank lines.")
    valid_records: int
    invalid_records: int
    invalid_fraction: float
    max_invalid_fraction: float
    blank_lines: int
    bytes: int
    errors: list[Issue] = Field(description="Ordered by line; at most VALIDATION_REPORT_MAX_ISSUES.")
    warnings: list[Issue]
    error_counts: dict[str, int] = Field(description="Every error, per code (not capped).")
    warning_counts: dict[str, int]
    stats: Stats
    tokens: TokenReport | None = Field(description="None when the upload was refused before its data was read.")
    split: Split | None = Field(None, description="None when the records were not split (`chatft validate`).")
    report_path: str = Field("", description="On a run: where the full report is (in RUNS_CONTAINER).")

    def summary(self, report_path: str, issues: int) -> "ValidationReport":
        """The same report with at most `issues` errors and warnings listed (what a run keeps)."""
        return self.model_copy(update={"errors": self.errors[:issues], "warnings": self.warnings[:issues],
                                       "report_path": report_path})

    @classmethod
    def refused(cls, problems: list[dict], reason: str) -> "ValidationReport":
        """The report of an upload refused before its records were read (e.g. for its blob metadata)."""
        empty = Stats(messages_per_record=MessagesPerRecord(min=None, mean=None, max=None),
                      messages_per_role=PerRole(), characters_per_role=PerRole())
        counts: dict[str, int] = {}
        for p in problems:
            counts[p["code"]] = counts.get(p["code"], 0) + 1
        return cls(ok=False, reason=reason, records=0, valid_records=0, invalid_records=0, invalid_fraction=0.0,
                   max_invalid_fraction=0.0, blank_lines=0, bytes=0,
                   errors=[Issue(line=p.get("line", 0), code=p["code"], message=p["message"]) for p in problems],
                   warnings=[], error_counts=counts, warning_counts={}, stats=empty, tokens=None)
