"""The malformed files people produce: each kind gets its own code (or named message) and line, and no input of
any shape crashes `chatft validate`, `chatft convert`, ingest or the trainer's reader (property-based)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from chatft_local.cli import main as chatft
from chatft_local.workspace.trainer import load_conversations
from shared.bootstrap import bootstrap
from shared.runs import State
from shared.tokens import MESSAGE_TOKENS, Estimate, estimate_tokens
from shared.validation import Validator, examine_record
from shared.validation.records import MAX_DEPTH
from tests.fakes import FakeMLBackend


def good(i: int) -> bytes:
    return orjson.dumps({"prompt_id": f"id-{i}", "messages": [{"role": "user", "content": f"question {i}"},
                                                               {"role": "assistant", "content": f"answer {i}"}]})


TEN = b"".join(good(i) + b"\n" for i in range(10))


def report_of(data: bytes, **limits) -> dict:
    validator = Validator(max_invalid_fraction=1.0, **limits)
    for _ in validator.records([data]):
        pass
    return validator.report().model_dump(mode="json")


def errors(report: dict) -> list[tuple[int, str]]:
    return [(e["line"], e["code"]) for e in report["errors"]]


def nested(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


def deep_json(levels: int) -> bytes:
    return b"[" * levels + b'"x"' + b"]" * levels


@pytest.mark.parametrize("levels", [300, 1000])
@pytest.mark.parametrize("where", ["prompt_id", "extra"])
def test_deep_nesting_is_refused_at_the_stated_depth(levels, where):
    line = (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "'
            + where.encode() + b'": ' + deep_json(levels) + b"}")
    report = report_of(TEN + line + b"\n" + good(10) + b"\n")
    assert errors(report) == [(11, "too_deeply_nested")]
    assert f"more than {MAX_DEPTH} levels" in report["errors"][0]["message"]
    assert report["valid_records"] == 11


def test_nesting_at_the_limit_passes_and_one_level_more_does_not():
    base = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert not examine_record({**base, "extra": nested(MAX_DEPTH - 1)})[0]  # the record itself is level 1
    assert examine_record({**base, "extra": nested(MAX_DEPTH)})[0][0][0] == "too_deeply_nested"


def test_deep_content_is_refused_too():
    line = orjson.dumps({"messages": [{"role": "user", "content": nested(200)},
                                      {"role": "assistant", "content": "a"}]})
    assert errors(report_of(TEN + line)) == [(11, "too_deeply_nested")]


@pytest.mark.parametrize("line,key", [
    (b'{"messages": [{"role": "user", "content": "q", "content": "again"}, {"role": "assistant", "content": "a"}]}',
     "content"),
    (b'{"messages": [], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     "messages"),
    (b'{"prompt_id": "a", "prompt_id": "b", "messages": [{"role": "user", "content": "q"}, '
     b'{"role": "assistant", "content": "a"}]}', "prompt_id"),
    # Beside the quote count's known strings: a number value, an escaped quote, a key of an extra object.
    (b'{"prompt_id": 1, "prompt_id": 2, "messages": [{"role": "user", "content": "q"}, '
     b'{"role": "assistant", "content": "a"}]}', "prompt_id"),
    (b'{"messages": [{"role": "user", "content": "say \\"hi\\"", "role": "user"}, '
     b'{"role": "assistant", "content": "a"}]}', "role"),
    (b'{"prompt": {"a": 1, "a": 2}, "messages": [{"role": "user", "content": "q"}, '
     b'{"role": "assistant", "content": "a"}]}', "a"),
])
def test_a_duplicate_key_is_an_error_naming_the_key(line, key):
    report = report_of(TEN + line + b"\n")
    assert errors(report) == [(11, "duplicate_key")]
    assert f"key {key!r} appears twice" in report["errors"][0]["message"]
    assert 'datasets.load_dataset("json")' in report["errors"][0]["message"]


def test_datasets_refuses_the_same_duplicate_key(tmp_path):
    """What `duplicate_key` matches: pyarrow's JSON reader (under datasets.load_dataset("json")) refuses it."""
    import pyarrow as pa
    import pyarrow.json as paj

    path = tmp_path / "dup.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "a", "content": "b"}]}\n')
    with pytest.raises(pa.ArrowInvalid, match="specified twice"):
        paj.read_json(path)


def test_a_content_holding_json_text_is_no_duplicate():
    text = json.dumps({"role": "x", "content": "y"})  # `\":` inside a content: the slow look finds no duplicate
    line = orjson.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]})
    report = report_of(TEN + line)
    assert report["ok"] and report["valid_records"] == 11


def test_a_trailing_comma_after_every_record_is_named_on_each_line():
    data = b"".join(good(i) + b",\n" for i in range(12))
    report = report_of(data)
    assert errors(report)[:3] == [(0, "too_few_records"), (1, "trailing_comma"), (2, "trailing_comma")]
    assert "a comma after the record" in report["errors"][1]["message"]


def test_a_trailing_comma_inside_a_record_is_named():
    report = report_of(TEN + b'{"messages": [{"role": "user", "content": "q"},]}\n')
    assert errors(report) == [(11, "trailing_comma")] and "closing bracket" in report["errors"][0]["message"]


def test_lone_cr_line_endings_are_one_file_level_error():
    report = report_of(b"".join(good(i) + b"\r" for i in range(12)))
    assert errors(report) == [(0, "cr_line_endings")] and "tr '\\r' '\\n'" in report["errors"][0]["message"]


def test_a_lone_cr_inside_a_line_is_named_with_its_column():
    report = report_of(TEN + good(10) + b"\r" + good(11) + b"\n")
    assert errors(report) == [(11, "lone_carriage_return")]
    assert f"column {len(good(10)) + 1}" in report["errors"][0]["message"]


def test_crlf_is_still_fine():
    assert report_of(b"".join(good(i) + b"\r\n" for i in range(12)))["ok"]


def test_a_nul_byte_is_named_with_its_column():
    report = report_of(TEN + b'{"messages": \x00[]}\n' + b"\x00" * 40 + b"\n")
    assert errors(report) == [(11, "nul_byte"), (12, "nul_byte")]
    assert "column 14" in report["errors"][0]["message"]


@pytest.mark.parametrize("record,code,hint", [
    ({"Messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "missing_messages",
     "did you mean 'messages'?"),
    ({"messages": [{"Role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "missing_role",
     "did you mean 'role'?"),
    ({"messages": [{"role": "user", "Content": "q"}, {"role": "assistant", "content": "a"}]}, "missing_content",
     "did you mean 'content'?"),
])
def test_keys_differing_only_in_case_get_a_did_you_mean(record, code, hint):
    report = report_of(TEN + orjson.dumps(record))
    assert errors(report) == [(11, code)] and hint in report["errors"][0]["message"]


# --- one count per meaning ---


def test_the_token_totals_agree_with_each_other_and_with_the_estimate():
    records = [{"messages": [{"role": "user", "content": "q" * (i + 1)}, {"role": "assistant", "content": "abc"}]}
               for i in range(12)]
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    validator = Validator(epochs=2)
    valid = list(validator.records([data]))
    tokens = validator.report().tokens
    by_function = [sum(estimate_tokens(m["content"]) for m in r["messages"]) + MESSAGE_TOKENS * 2 for r in records]
    by_counter = [sum(Estimate().count([m["content"] for m in r["messages"]])) + MESSAGE_TOKENS * 2 for r in records]
    assert [v.tokens for v in valid] == by_function == by_counter
    assert tokens.record_tokens == sum(by_function) == tokens.trained_tokens_per_epoch
    assert tokens.trained_tokens_total == 2 * tokens.record_tokens and tokens.records_counted == 12
    # the same file read with a counter that is not the estimate's fast path gives the same totals
    class Slow(Estimate):
        pass

    slow = Validator(epochs=2, counter=Slow())
    list(slow.records([data]))
    assert slow.report().tokens.model_dump() == tokens.model_dump()


def test_the_split_is_counted_by_the_validator_and_all_test_is_refused():
    validator = Validator(split=lambda r: "test", test_fraction=1.0)
    list(validator.records([TEN + good(10) + b"\n"]))
    report = validator.report()
    assert not report.ok and report.split.test == 11 and errors(report.model_dump()) == [(0, "too_few_records")]
    assert "test split" in report.reason


# --- chatft convert ---


def test_convert_drops_a_header_line_with_a_reason_and_converts_numeric_answers(tmp_path, capsys):
    source = tmp_path / "alpaca.jsonl"
    rows = [json.dumps({"instruction": f"What is {i} + {i}?", "input": "", "output": 2 * i if i != 3 else 6.5})
            for i in range(12)]
    source.write_text("instruction,input,output\n" + "\n".join(rows) + "\n")
    out = tmp_path / "chat.jsonl"
    assert chatft(["convert", str(source), str(out)]) == 0
    err = capsys.readouterr().err
    assert "dropped line 1: header_line:" in err
    answers = [json.loads(line)["messages"][1]["content"] for line in out.read_text().splitlines()]
    assert answers[:4] == ["0", "2", "4", "6.5"] and len(answers) == 12


# --- nothing crashes: arbitrary bytes and arbitrary JSON through every entry point ---

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(["messages", "role", "content", "prompt_id", "Role",
                                                              "x", "conversations", "instruction", "output"])
                                             | st.text(max_size=5), inner, max_size=4), max_leaves=30)
lines = st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                  st.integers(1, 1100).map(deep_json),
                  st.sampled_from([good(0), good(1) + b",", good(2).replace(b'"role"', b'"role","role":1', 1),
                                   b"\x00", b"\r", b"\xef\xbb\xbf", b"\xff\xfe"]))
files = st.lists(lines, max_size=14).map(lambda ls: b"\n".join(ls))
_names = itertools.count()


def _quiet_cli(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return chatft(list(argv))


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=files)
def test_validate_convert_and_the_trainer_reader_never_crash(data, tmp_path):
    path = tmp_path / f"in-{next(_names)}.jsonl"
    path.write_bytes(data)
    assert _quiet_cli("validate", str(path)) in (0, 1)
    assert _quiet_cli("validate", "--json", str(path)) in (0, 1)
    assert _quiet_cli("convert", str(path), str(tmp_path / "out.jsonl")) in (0, 1, 2)
    load_conversations(path)  # the trainer's reader skips what it cannot use
    report = report_of(data)
    assert report["records"] == report["valid_records"] + report["invalid_records"]


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=files)
def test_ingest_always_ends_in_a_report(data, settings):
    from shared.ingestion import ingest_upload
    from shared.validation import ValidationReport

    svc = bootstrap(settings, ml=FakeMLBackend())
    blob = svc.blobs.blob(svc.settings.training_container, f"fuzz-{next(_names)}.jsonl")
    # force: examples with the same bytes are no duplicate run of each other here (shared/duplicates.py)
    blob.upload_blob(TEN + data, overwrite=True, metadata={"force": "true"})
    run = ingest_upload(svc, blob.container_name, blob.blob_name, blob)
    assert run.state in (State.QUEUED, State.REJECTED)
    stored = svc.blobs.read_json(svc.settings.runs_container, f"{run.run_id}/validation.json")
    assert ValidationReport.model_validate(stored).ok == (run.state == State.QUEUED)
