"""Validation of chat JSONL uploads, by job: `framing` (bytes to lines), `sniffing` (faults of the whole file and
hints for a line that is not JSON), `records` (every rule about one record), `report` (the declared report) and
`validator` (the streaming pass that ties them together and counts tokens).

An upload is one JSON object per line, `{"messages": [{"role", "content"}, ...], "prompt"?, "prompt_id"?}`. The
checks are the ones Azure ML's fine-tuning step applies hours later on GPU (see azure-facts.md), run up front with
a line number and a stable code per problem.
"""

from .framing import read_chunks
from .records import examine_record
from .report import ValidationReport
from .sniffing import file_fault
from .validator import MIN_RECORDS, ValidRecord, Validator, validate_chunks

ERROR_CODES = (
    "empty_file", "too_few_records", "not_utf8", "not_json_lines", "cr_line_endings", "invalid_utf8",
    "invalid_json", "nul_byte", "lone_carriage_return", "trailing_comma", "too_deeply_nested", "duplicate_key",
    "not_an_object", "record_too_large", "missing_messages", "too_few_messages", "message_not_object",
    "missing_role", "unrecognized_role", "missing_content", "empty_content", "content_not_string",
    "system_not_first", "no_assistant_message", "assistant_truncated",
)
WARNING_CODES = ("blank_line", "unexpected_key", "trailing_user_message", "roles_not_alternating",
                 "duplicate_prompt_id", "exceeds_max_seq_length")

__all__ = ["ERROR_CODES", "MIN_RECORDS", "WARNING_CODES", "ValidRecord", "ValidationReport", "Validator",
           "examine_record", "file_fault", "read_chunks", "validate_chunks"]
