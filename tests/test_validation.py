"""The streaming chat-data validator: every code with its line number, chunking, limits, policy, splitting."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shared.ingestion import split_of
from shared.validation import ERROR_CODES, WARNING_CODES, Validator, examine_record, read_chunks, validate_chunks


def inspect_record(record):
    errors, warnings, _ = examine_record(record)
    return errors, warnings

from .conftest import PROJECT_ROOT


def chat(*turns: str, **extra) -> dict:
    """A record whose messages take the given roles in order."""
    return {"messages": [{"role": r, "content": f"{r} text {i}"} for i, r in enumerate(turns)], **extra}


def good(i: int) -> bytes:
    return orjson.dumps({"prompt": f"question {i}", "prompt_id": f"id-{i}",
                         "messages": [{"role": "user", "content": f"question {i}"},
                                      {"role": "assistant", "content": f"answer {i}"}]})


TEN_GOOD = b"".join(good(i) + b"\n" for i in range(10))


def run(data: bytes, chunk_size: int | None = None, **limits):
    """(valid records as (line, raw bytes), report) for `data` fed in chunks of `chunk_size` bytes."""
    chunks = [data] if chunk_size is None else [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    validator = Validator(**limits)
    records = [(r.line, r.raw) for r in validator.records(chunks)]
    return records, validator.report().model_dump(mode="json")


def codes(report, kind: str = "errors") -> list[tuple[int, str]]:
    if not isinstance(report, dict):
        report = report.model_dump(mode="json")
    return [(issue["line"], issue["code"]) for issue in report[kind]]


# One bad line each: (line bytes, expected error code). Placed at line 11, after ten good records.
BAD_LINES = {
    "invalid_utf8": b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
    "invalid_json": b'{"messages": [',
    "not_an_object": b'"just a string"',
    "missing_messages": orjson.dumps({"prompt": "hi"}),
    "missing_messages_not_list": orjson.dumps({"messages": {"role": "user", "content": "hi"}}),
    "too_few_messages": orjson.dumps(chat("assistant")),
    "message_not_object": orjson.dumps({"messages": [{"role": "user", "content": "q"}, "answer"]}),
    "missing_role": orjson.dumps({"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}),
    "unrecognized_role": orjson.dumps({"messages": [{"role": "human", "content": "q"},
                                                    {"role": "assistant", "content": "a"}]}),
    "missing_content": orjson.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}),
    "empty_content": orjson.dumps({"messages": [{"role": "user", "content": ""},
                                                {"role": "assistant", "content": "a"}]}),
    "empty_content:whitespace": orjson.dumps({"messages": [{"role": "user", "content": "q"},
                                                         {"role": "assistant", "content": " \t\n\u00a0 "}]}),
    "content_not_string": orjson.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                                                     {"role": "assistant", "content": "a"}]}),
    "content_not_string:object": orjson.dumps({"messages": [{"role": "user", "content": {"text": "q"}},
                                                            {"role": "assistant", "content": "a"}]}),
    "content_not_string:number": orjson.dumps({"messages": [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": 42}]}),
    "content_not_string:boolean": orjson.dumps({"messages": [{"role": "user", "content": True},
                                                             {"role": "assistant", "content": "a"}]}),
    "missing_content:null": orjson.dumps({"messages": [{"role": "user", "content": None},
                                                       {"role": "assistant", "content": "a"}]}),
    "missing_role:null": orjson.dumps({"messages": [{"role": None, "content": "q"},
                                                    {"role": "assistant", "content": "a"}]}),
    "unrecognized_role:number": orjson.dumps({"messages": [{"role": 1, "content": "q"},
                                                           {"role": "assistant", "content": "a"}]}),
    "unrecognized_role:capitalised": orjson.dumps({"messages": [{"role": "User", "content": "q"},
                                                                {"role": "assistant", "content": "a"}]}),
    "unrecognized_role:tool": orjson.dumps({"messages": [{"role": "user", "content": "q"},
                                                         {"role": "tool", "content": "x"},
                                                         {"role": "assistant", "content": "a"}]}),
    "system_not_first": orjson.dumps(chat("user", "system", "assistant")),
    "no_assistant_message": orjson.dumps(chat("system", "user")),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_each_error_code_is_reported_with_its_line(case):
    code = case.removesuffix("_not_list").split(":")[0]
    data = TEN_GOOD + BAD_LINES[case] + b"\n" + good(10) + b"\n"
    records, report = run(data)
    assert (11, code) in codes(report)
    assert report["error_counts"][code] >= 1
    assert [line for line, _ in records] == [*range(1, 11), 12]  # the bad record is left out, the next one kept
    assert (report["records"], report["valid_records"], report["invalid_records"]) == (12, 11, 1)
    assert not report["ok"] and "1 of 12 records are invalid" in report["reason"]


def test_record_too_large_is_skipped_and_the_next_line_keeps_its_number():
    huge = orjson.dumps({"messages": [{"role": "user", "content": "x" * 5_000_000},
                                      {"role": "assistant", "content": "a"}]})
    data = TEN_GOOD + huge + b"\n" + good(10) + b"\n" + b"{oops\n"
    for chunk_size in (65536, 1 << 20, None):
        records, report = run(data, chunk_size)
        assert codes(report) == [(11, "record_too_large"), (13, "invalid_json")]
        assert [line for line, _ in records][-1] == 12
        assert "1048576 bytes" in report["errors"][0]["message"]
        assert report["bytes"] == len(data)


def test_a_line_at_the_limit_passes_and_one_byte_more_does_not():
    line = orjson.dumps(chat("user", "assistant", prompt="p" * 300))
    for limit, expected in ((len(line), []), (len(line) - 1, [(11, "record_too_large")])):
        for ending in (b"\n", b"\r\n", b""):
            _, report = run(TEN_GOOD + line + ending, 7, max_record_bytes=limit)
            assert codes(report) == expected, (limit, ending)


def test_an_oversized_line_is_never_held_in_memory():
    def chunks():  # a 40 MB line arriving in 64 KiB pieces, then a good record
        for _ in range(640):
            yield b"x" * 65536
        yield b"\n" + good(0) + b"\n"

    tracemalloc.start()
    try:
        validator = Validator(max_record_bytes=1 << 20, min_records=1)
        records = list(validator.records(chunks()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.line for r in records] == [2]
    assert codes(validator.report()) == [(1, "record_too_large")]
    assert peak < 4 * (1 << 20)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_invalid_json_and_the_message_says_so(literal):
    line = b'{"messages": [{"role": "user", "content": "q", "score": ' + literal + b'}]}'
    _, report = run(TEN_GOOD + line + b"\n")
    assert codes(report) == [(11, "invalid_json")]
    assert literal.decode() in report["errors"][0]["message"]
    assert "NaN and Infinity literals are not allowed" in report["errors"][0]["message"]


def test_the_word_nan_inside_a_string_is_fine():
    records, report = run(TEN_GOOD + orjson.dumps(chat("user", "assistant", note="NaN Infinity")) + b"\n")
    assert report["ok"] and len(records) == 11


@pytest.mark.parametrize("line", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_deep_nesting_is_invalid_json_not_a_crash(line):
    _, report = run(TEN_GOOD + line + b"\n" + good(10))
    assert codes(report) == [(11, "too_deeply_nested")]
    assert "more than 1024 levels" in report["errors"][0]["message"]


@pytest.mark.parametrize("line,kind", [(b"[1, 2]", "an array"), (b"42", "a number"), (b"null", "null"),
                                       (b'[{"messages": []}]', "an array")])
def test_top_level_values_other_than_objects(line, kind):
    _, report = run(line + b"\n" + TEN_GOOD)
    assert codes(report) == [(1, "not_an_object")]
    assert kind in report["errors"][0]["message"]


def test_invalid_json_message_gives_the_column():
    _, report = run(TEN_GOOD + b'{"messages": [}\n')
    assert report["errors"][0]["message"].startswith("not valid JSON: ")
    assert "column 15" in report["errors"][0]["message"]


def test_invalid_utf8_mid_file_names_the_byte_and_the_rest_is_checked():
    data = TEN_GOOD[:40] + b"\xff\xfe" + TEN_GOOD[40:] + good(10) + b"\n"
    records, report = run(data, 3)
    assert codes(report) == [(1, "invalid_utf8")]
    assert "byte 41" in report["errors"][0]["message"]
    assert [line for line, _ in records] == list(range(2, 12))


@pytest.mark.parametrize("record,code,line", [
    (chat("user", "assistant", source="web"), "unexpected_key", 11),
    ({"messages": [{"role": "user", "content": "q", "name": "x"}, {"role": "assistant", "content": "a"}]},
     "unexpected_key", 11),
    (chat("system", "user", "assistant", "user"), "trailing_user_message", 11),
    (chat("user", "user", "assistant"), "roles_not_alternating", 11),
    (chat("user", "assistant", "assistant"), "roles_not_alternating", 11),
])
def test_each_warning_keeps_the_record(record, code, line):
    records, report = run(TEN_GOOD + orjson.dumps(record) + b"\n")
    assert codes(report, "warnings") == [(line, code)]
    assert report["ok"] and report["valid_records"] == 11 and records[-1][0] == 11
    assert report["warning_counts"] == {code: 1}


def test_duplicate_prompt_id_is_a_warning_on_the_repeat():
    records, report = run(TEN_GOOD + good(3) + b"\n" + good(3) + b"\n")
    assert codes(report, "warnings") == [(11, "duplicate_prompt_id"), (12, "duplicate_prompt_id")]
    assert report["ok"] and len(records) == 12


def test_a_prompt_id_on_an_invalid_record_is_not_remembered():
    bad = orjson.dumps({"prompt_id": "id-x", "messages": []})
    dup = orjson.dumps(chat("user", "assistant", prompt_id="id-x"))
    _, report = run(TEN_GOOD + bad + b"\n" + dup + b"\n", max_invalid_fraction=0.5)
    assert codes(report, "warnings") == []


def test_blank_lines_are_skipped_with_a_warning_and_are_not_records():
    data = b"\n" + TEN_GOOD[:60] + TEN_GOOD[60:].replace(b"\n", b"\n \t\r\n", 1)
    records, report = run(data)
    assert codes(report, "warnings") == [(1, "blank_line"), (3, "blank_line")]
    assert (report["records"], report["blank_lines"], report["ok"]) == (10, 2, True)
    assert [line for line, _ in records] == [2, *range(4, 13)]


def test_crlf_and_bom_are_accepted_and_stripped_from_raw():
    data = b"\xef\xbb\xbf" + TEN_GOOD.replace(b"\n", b"\r\n")
    for chunk_size in (1, 2, 5, None):
        records, report = run(data, chunk_size)
        assert report["ok"] and report["valid_records"] == 10, chunk_size
        assert records[0][1] == good(0) and all(raw == good(i) for i, (_, raw) in enumerate(records))
        assert report["bytes"] == len(data)


def test_a_bom_later_in_the_file_is_not_stripped():
    _, report = run(TEN_GOOD + b"\xef\xbb\xbf" + good(10))
    assert codes(report) == [(11, "invalid_json")]


def test_no_trailing_newline_still_counts_the_last_record():
    records, report = run(TEN_GOOD + good(10))
    assert report["valid_records"] == 11 and records[-1] == (11, good(10))


def test_zero_byte_file_and_blank_only_file_are_empty():
    for data in (b"", b"\n\n  \n", b"\xef\xbb\xbf"):
        records, report = run(data)
        assert records == [] and not report["ok"]
        assert codes(report) == [(0, "empty_file")]
        assert report["records"] == 0 and report["bytes"] == len(data)


def test_too_few_records_counts_valid_ones_only():
    records, report = run(TEN_GOOD[: TEN_GOOD.rindex(b"{")] + b"{bad\n", max_invalid_fraction=0.5)
    assert codes(report) == [(0, "too_few_records"), (10, "invalid_json")]
    assert "9 valid record(s)" in report["errors"][0]["message"] and not report["ok"]
    assert report["error_counts"] == {"too_few_records": 1, "invalid_json": 1}
    _, report = run(good(1) + b"\n", min_records=1)
    assert report["ok"]


def test_invalid_fraction_policy_at_and_above_the_threshold():
    data = b"".join(good(i) + b"\n" for i in range(19)) + b"[]\n"  # 1 of 20 invalid: 5%
    records, report = run(data, max_invalid_fraction=0.05)
    assert report["ok"] and report["invalid_records"] == 1 and report["invalid_fraction"] == 0.05
    assert len(records) == 19 and report["reason"] == ""
    _, report = run(data, max_invalid_fraction=0.049)
    assert not report["ok"] and "more than VALIDATION_MAX_INVALID_FRACTION allows" in report["reason"]


def test_every_error_of_a_record_is_listed():
    record = {"messages": [{"role": "bot", "content": ""}, 7, {"role": "system"}]}
    _, report = run(TEN_GOOD + orjson.dumps(record) + b"\n")
    assert [c for _, c in codes(report)] == ["unrecognized_role", "empty_content", "message_not_object",
                                             "system_not_first", "missing_content", "no_assistant_message"]
    assert all(line == 11 for line, _ in codes(report))


@pytest.mark.parametrize("message,kind", [("hi", "a string"), ("", "an empty string"), (3, "a number"),
                                          (2.5, "a number"), (True, "a boolean"), (None, "null"),
                                          ([{"role": "user"}], "an array")])
def test_a_message_of_every_other_json_kind_is_message_not_object(message, kind):
    record = {"messages": [{"role": "user", "content": "q"}, message, {"role": "assistant", "content": "a"}]}
    assert inspect_record(record) == ([("message_not_object", f"message 2 is {kind}, expected an object")], [])
    _, report = run(TEN_GOOD + orjson.dumps(record) + b"\n")
    assert codes(report) == [(11, "message_not_object")]


def test_issue_lists_are_capped_and_counts_stay_complete():
    data = TEN_GOOD + b"[]\n" * 30 + b"\n" * 7
    _, report = run(data, max_issues=5, max_invalid_fraction=1.0)
    assert len(report["errors"]) == 5 and report["error_counts"] == {"not_an_object": 30}
    assert len(report["warnings"]) == 5 and report["warning_counts"] == {"blank_line": 7}
    json.dumps(report)  # JSON-serialisable
    _, report = run(b"[]\n" * 30, max_issues=5, max_invalid_fraction=1.0)
    assert codes(report)[:2] == [(0, "too_few_records"), (1, "not_an_object")] and len(report["errors"]) == 5


def test_stats_describe_the_valid_records():
    lines = [chat("system", "user", "assistant"), chat("user", "assistant", "user", "assistant"),
             {"messages": [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y" * 80}]},
             chat("user")]  # the last is invalid and left out of the stats
    data = b"".join(orjson.dumps(r) + b"\n" for r in lines)
    _, report = run(data, min_records=1, max_invalid_fraction=0.5)
    stats = report["stats"]
    assert stats["messages_per_record"] == {"min": 2, "mean": 3.0, "max": 4}
    assert stats["messages_per_role"] == {"system": 1, "user": 4, "assistant": 4}
    user_chars = len("user text 1") + len("user text 0") + len("user text 2") + 40
    assert stats["characters_per_role"]["user"] == user_chars
    assert stats["characters_per_role"]["assistant"] == 3 * len("assistant text 1") + 80


def test_stats_are_the_same_on_the_fast_and_the_full_path():
    plain = [chat("system", "user", "assistant"), chat("user", "assistant")]
    unusual = [chat("system", "user", "assistant", tag=1),  # both take the full path (each has a warning)
               {"messages": [{"role": "user", "content": "user text 0", "name": "n"},
                             {"role": "assistant", "content": "assistant text 1"}]}]
    stats = [run(b"\n".join(orjson.dumps(r) for r in rs), min_records=1)[1]["stats"] for rs in (plain, unusual)]
    assert stats[0] == stats[1]


def test_stats_count_characters_not_bytes():
    record = {"messages": [{"role": "user", "content": "café"}, {"role": "assistant", "content": "東京"}]}
    _, report = run(orjson.dumps(record), min_records=1)
    assert report["stats"]["characters_per_role"] == {"system": 0, "user": 4, "assistant": 2}


def test_stats_of_no_valid_record_are_null():
    _, report = run(b"[]\n", max_invalid_fraction=1.0)
    assert report["stats"]["messages_per_record"] == {"min": None, "mean": None, "max": None}


MIXED = (b"\xef\xbb\xbf" + good(0) + b"\r\n\n" + b"[1]\n" + orjson.dumps(chat("user", "user", "assistant"))
         + b"\r\n" + b"x" * 300 + b"\n" + good(1) + b"\n" + b'{"a": NaN}\n' + b"\xc3\x28\n"
         + orjson.dumps(chat("system", "user")) + b"\n" + TEN_GOOD + good(11))


def test_chunk_boundaries_never_change_the_result():
    expected = run(MIXED, max_record_bytes=200, max_invalid_fraction=0.5)
    assert codes(expected[1]) == [(3, "not_an_object"), (5, "record_too_large"), (7, "invalid_json"),
                                  (8, "invalid_utf8"), (9, "no_assistant_message")]
    for chunk_size in (1, 2, 3, 4, 7, 64, 199, 200, 201, 4096):
        assert run(MIXED, chunk_size, max_record_bytes=200, max_invalid_fraction=0.5) == expected, chunk_size


def test_chunks_may_be_any_bytes_like_and_may_be_empty():
    data = TEN_GOOD
    chunks = [b"", bytearray(data[:50]), memoryview(data[50:120]), b"", data[120:]]
    validator = Validator()
    assert len(list(validator.records(chunks))) == 10 and validator.report().ok


def test_read_chunks_streams_a_file(tmp_path):
    path = tmp_path / "upload.jsonl"
    path.write_bytes(TEN_GOOD * 3)
    with open(path, "rb") as stream:
        sizes = [len(c) for c in read_chunks(stream, size=100)]
    assert sizes[0] == 100 and sum(sizes) == len(TEN_GOOD) * 3
    with open(path, "rb") as stream:
        report = validate_chunks(read_chunks(stream, size=100)).model_dump()
    assert report["ok"] and report["valid_records"] == 30


def test_a_validator_checks_one_upload_and_reports_only_at_the_end():
    validator = Validator()
    records = validator.records([TEN_GOOD])
    next(records)
    with pytest.raises(RuntimeError):
        validator.report()
    with pytest.raises(RuntimeError):
        next(validator.records([TEN_GOOD]))


def test_codes_are_the_documented_ones():
    _, report = run(MIXED, max_record_bytes=200, max_invalid_fraction=0.5)
    assert set(report["error_counts"]) <= set(ERROR_CODES)
    assert set(report["warning_counts"]) <= set(WARNING_CODES)


# --- splitting ---

def test_split_uses_prompt_id_so_copies_land_together():
    a = {"prompt_id": "abc", "messages": [1]}
    b = {"prompt_id": "abc", "messages": [2], "prompt": "other"}
    assert all(split_of(a, f) == split_of(b, f) for f in (0.1, 0.3, 0.5, 0.9))


def test_split_without_prompt_id_ignores_key_order():
    a = orjson.loads(b'{"messages": [{"role": "user", "content": "q"}], "prompt": "p"}')
    b = orjson.loads(b'{"prompt": "p", "messages": [{"content": "q", "role": "user"}]}')
    assert [split_of(a, f / 20) for f in range(20)] == [split_of(b, f / 20) for f in range(20)]


def test_split_fraction_is_respected():
    records = [{"prompt_id": f"p{i}"} for i in range(20000)]
    tests = sum(split_of(r, 0.1) == "test" for r in records)
    assert 1800 < tests < 2200
    assert all(split_of(r, 0.0) == "train" for r in records[:1000])
    assert all(split_of(r, 0.999999) == "test" for r in records[:1000])


def test_split_is_the_same_in_another_process():
    ids = [f"prompt-{i}" for i in range(200)]
    here = [split_of({"prompt_id": i}, 0.3) for i in ids] + [split_of({"messages": [i]}, 0.3) for i in ids]
    code = ("import json, sys; from shared.ingestion import split_of; ids = json.load(sys.stdin); "
            "print(json.dumps([split_of({'prompt_id': i}, 0.3) for i in ids] + "
            "[split_of({'messages': [i]}, 0.3) for i in ids]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True,
                         cwd=PROJECT_ROOT, env={"PYTHONHASHSEED": "12345", "PATH": ""}, check=True)
    assert json.loads(out.stdout) == here
    assert "test" in here and "train" in here


# --- property-based ---

# Content with at least one character that is not whitespace (whitespace-only content is `empty_content`).
text = st.text(min_size=1, max_size=40).filter(lambda t: not t.isspace())


@st.composite
def valid_records(draw):
    turns = draw(st.integers(1, 5))
    first = draw(st.sampled_from(["user", "assistant"]))
    other = "assistant" if first == "user" else "user"
    roles = [first, other] * turns
    if roles[-1] == "user":
        roles.pop()
    if len(roles) < 2:
        roles = ["user", "assistant"]
    if draw(st.booleans()):
        roles = ["system"] + roles
    record = {"messages": [{"role": r, "content": draw(text)} for r in roles]}
    if draw(st.booleans()):
        record["prompt"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        record["prompt_id"] = "generated-" + draw(st.text(max_size=20))
    return record


def _feed(record: dict, chunk_size: int):
    line = orjson.dumps(record)
    return run(line + b"\n" + TEN_GOOD, chunk_size)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_records(), st.integers(1, 64))
def test_generated_valid_records_always_pass(record, chunk_size):
    records, report = _feed(record, chunk_size)
    assert report["ok"] and report["error_counts"] == {} and report["warning_counts"] == {}
    assert records[0] == (1, orjson.dumps(record))


def _drop_messages(r, i):
    del r["messages"]


def _not_a_list(r, i):
    r["messages"] = {"role": "user"}


def _one_message(r, i):
    r["messages"] = r["messages"][-1:]


def _not_object(r, i):
    r["messages"][i] = "hello"


def _no_role(r, i):
    del r["messages"][i]["role"]


def _bad_role(r, i):
    r["messages"][i]["role"] = "Assistant"


def _no_content(r, i):
    del r["messages"][i]["content"]


def _empty_content(r, i):
    r["messages"][i]["content"] = ""


def _number_content(r, i):
    r["messages"][i]["content"] = 3


def _blank_content(r, i):
    r["messages"][i]["content"] = " \n\t "


def _parts_content(r, i):
    r["messages"][i]["content"] = [{"type": "text", "text": r["messages"][i]["content"]}]


def _late_system(r, i):
    r["messages"].insert(max(i, 1), {"role": "system", "content": "be brief"})


def _no_assistant(r, i):
    for m in r["messages"]:
        if m["role"] == "assistant":
            m["role"] = "user"


MUTATIONS = [(_drop_messages, "missing_messages"), (_not_a_list, "missing_messages"),
             (_one_message, "too_few_messages"), (_not_object, "message_not_object"), (_no_role, "missing_role"),
             (_bad_role, "unrecognized_role"), (_no_content, "missing_content"),
             (_empty_content, "empty_content"), (_number_content, "content_not_string"),
             (_blank_content, "empty_content"), (_parts_content, "content_not_string"),
             (_late_system, "system_not_first"), (_no_assistant, "no_assistant_message")]


@settings(max_examples=200, deadline=None)
@given(valid_records(), st.sampled_from(MUTATIONS), st.integers(0, 100), st.integers(1, 64))
def test_a_mutated_record_fails_with_the_expected_code(record, mutation, index, chunk_size):
    mutate, code = mutation
    mutate(record, index % len(record["messages"]))
    records, report = _feed(record, chunk_size)
    assert (1, code) in codes(report)
    assert [line for line, _ in records] == list(range(2, 12)) and not report["ok"]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(
    ["", "user", "assistant", "system", "x"]), lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["role", "content", "name"]), inner, max_size=3), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system",
                                                                                 "bot", None]),
                                                        "content": st.sampled_from(["hi", "", None, 1]),
                                                        "name": json_values}) | json_values, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"messages": messages | json_values, "prompt_id": st.sampled_from(
    ["a", "b"]), "extra": json_values}))
def test_the_fast_path_agrees_with_the_full_inspection(record):
    errors, warnings = inspect_record(record)
    records, report = run(orjson.dumps(record), min_records=1, max_invalid_fraction=1.0)
    assert [c for line, c in codes(report) if line] == [c for c, _ in errors]
    # Warnings are reported whether or not the record also has an error.
    assert [c for _, c in codes(report, "warnings")] == [c for c, _ in warnings]
    assert bool(records) == (not errors)


# --- faults of the whole file: one error at line 0, no per-line noise, no extra record ---

RECORDS = [{"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"answer {i} café"}]} for i in range(12)]
JSONL_TEXT = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS)


@pytest.mark.parametrize("encoding,name", [
    ("utf-16", "UTF-16 LE"),  # Python writes a BOM and little-endian, as PowerShell's `>` does
    ("utf-16-le", "UTF-16 LE"), ("utf-16-be", "UTF-16 BE"), ("utf-32", "UTF-32 LE"), ("utf-32-le", "UTF-32 LE"),
    ("utf-32-be", "UTF-32 BE"),
])
def test_utf16_and_utf32_are_one_file_level_not_utf8(encoding, name):
    data = JSONL_TEXT.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # with a BOM too
    for chunk_size in (None, 3):
        records, report = run(data, chunk_size)
        assert codes(report) == [(0, "not_utf8")] and records == []
        message = report["errors"][0]["message"]
        assert name in message and "iconv -f" in message
        assert report["error_counts"] == {"not_utf8": 1} and report["warnings"] == []
        assert report["records"] == 0 and report["bytes"] == len(data) and not report["ok"]
        assert report["reason"] == message


def test_a_legacy_8bit_file_names_the_encoding_on_each_bad_line():
    data = JSONL_TEXT.encode("cp1252")
    _, report = run(data, max_invalid_fraction=1.0)
    assert codes(report) == [(0, "too_few_records")] + [(i, "invalid_utf8") for i in range(1, 13)]
    assert "Windows-1252" in report["errors"][1]["message"]


def _pretty_objects(indent):
    return "".join(json.dumps(r, indent=indent) + "\n" for r in RECORDS).encode()


@pytest.mark.parametrize("data,what", [
    (json.dumps(RECORDS, indent=2).encode(), "JSON array"),  # json.dump(records, f, indent=2)
    (json.dumps(RECORDS).encode(), "JSON array"),  # json.dump(records, f): one line
    (json.dumps(RECORDS).encode() + b"\n", "JSON array"),
    (b"\xef\xbb\xbf" + json.dumps(RECORDS, indent=4).encode(), "JSON array"),
    (b"[\n" + b",\n".join(json.dumps(r).encode() for r in RECORDS) + b"\n]\n", "JSON array"),  # one per line
    (_pretty_objects(2), "pretty-printed"),  # jq . of a JSONL file
    (_pretty_objects("\t"), "pretty-printed"),
    (b"\r\n".join(_pretty_objects(2).split(b"\n")), "pretty-printed"),
    (b"prompt,completion\nhello,world\n", "CSV"),
    (b"\x1f\x8b\x08\x00" + bytes(40), "gzip"),
    (b"PAR1" + bytes(40), "Parquet"),
    (b"PK\x03\x04" + bytes(40), "ZIP"),
])
def test_a_json_document_or_other_format_is_one_file_level_not_json_lines(data, what):
    for chunk_size in (None, 7):
        records, report = run(data, chunk_size)
        assert codes(report) == [(0, "not_json_lines")], report["errors"][:3]
        assert what in report["errors"][0]["message"] and records == []
        assert report["warnings"] == [] and report["records"] == 0 and report["bytes"] == len(data)
    if what in ("JSON array", "pretty-printed", "CSV"):
        assert "chatft convert" in report["errors"][0]["message"]


def test_a_large_one_line_json_array_is_found_from_its_start():
    data = json.dumps(RECORDS * 2000).encode()  # over HEAD_BYTES, no line break at all
    _, report = run(data, 65536, max_record_bytes=1 << 16)
    assert codes(report) == [(0, "not_json_lines")]


def test_a_record_broken_by_one_line_break_is_still_a_per_line_error():
    broken = b'{"messages": [{"role": "user", "content": "line one\n'
    rest = b'line two"}, {"role": "assistant", "content": "a"}]}\n'
    records, report = run(broken + rest + TEN_GOOD, max_invalid_fraction=1.0)
    assert codes(report) == [(1, "invalid_json"), (2, "invalid_json")]
    assert "ends early" in report["errors"][0]["message"] and len(records) == 10


def test_arrays_on_lines_of_a_jsonl_file_stay_per_line():
    _, report = run(b'[{"messages": []}]\n' + TEN_GOOD)
    assert codes(report) == [(1, "not_an_object")]


@pytest.mark.parametrize("line,hint", [
    (b'{"a": 1}{"b": 2}', "two or more JSON values on one line"),
    (b"{'messages': []}", "Python dict"),
])
def test_invalid_json_hints(line, hint):
    _, report = run(TEN_GOOD + line + b"\n")
    assert codes(report) == [(11, "invalid_json")] and hint in report["errors"][0]["message"]


@pytest.mark.parametrize("record,name", [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "ShareGPT"),
    ({"instruction": "q", "input": "", "output": "a"}, "Alpaca"),
    ({"prompt": "q", "completion": "a"}, "prompt/completion"),
])
def test_other_record_formats_are_named_with_the_way_to_convert(record, name):
    _, report = run(TEN_GOOD + orjson.dumps(record) + b"\n")
    assert codes(report) == [(11, "missing_messages")]
    assert name in report["errors"][0]["message"] and "chatft convert" in report["errors"][0]["message"]


def test_foreign_role_names_point_to_convert():
    record = {"messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]}
    _, report = run(TEN_GOOD + orjson.dumps(record) + b"\n")
    assert [c for _, c in codes(report)] == ["unrecognized_role", "unrecognized_role", "no_assistant_message"]
    assert "ShareGPT" in report["errors"][0]["message"]


def test_unexpected_keys_are_warned_even_when_the_record_has_an_error():
    record = {"messages": [{"role": "user", "content": "q", "name": "x"}, {"role": "assistant", "content": " "}],
              "source": "web"}
    records, report = run(TEN_GOOD + orjson.dumps(record) + b"\n")
    assert codes(report) == [(11, "empty_content")]
    assert codes(report, "warnings") == [(11, "unexpected_key"), (11, "unexpected_key")]
    assert "'source'" in report["warnings"][0]["message"] and "'name'" in report["warnings"][1]["message"]
    assert len(records) == 10


def test_a_message_with_two_keys_of_which_one_is_unknown_is_warned_and_failed():
    record = {"messages": [{"role": "user", "text": "q"}, {"role": "assistant", "content": "a"}]}
    _, report = run(TEN_GOOD + orjson.dumps(record) + b"\n")
    assert codes(report) == [(11, "missing_content")] and codes(report, "warnings") == [(11, "unexpected_key")]


# --- token budget ---

def _long(user_chars: int, assistant_chars: int, system_chars: int = 0) -> bytes:
    messages = [{"role": "system", "content": "s" * system_chars}] if system_chars else []
    messages += [{"role": "user", "content": "u" * user_chars}, {"role": "assistant", "content": "a" * assistant_chars}]
    return orjson.dumps({"messages": messages})


def test_estimated_tokens_per_record_and_their_distribution():
    # "question 0" (10 chars) + "answer 0" (8): ceil(18 / 4) = 5 content tokens + 2 messages x 4 = 13
    records = [orjson.dumps({"messages": [{"role": "user", "content": "question 0"},
                                          {"role": "assistant", "content": "answer 0"}]})] * 10
    valid, report = run(b"\n".join(records) + b"\n" + _long(400, 400) + b"\n", epochs=3)
    tokens = report["tokens"]
    assert tokens["method"].startswith("estimate") and tokens["records"] == 11
    assert (tokens["min"], tokens["p50"], tokens["p95"], tokens["max"]) == (13, 13, 208, 208)
    assert tokens["record_tokens"] == 10 * 13 + 208 and tokens["trained_tokens_per_epoch"] == tokens["record_tokens"]
    assert tokens["epochs"] == 3 and tokens["trained_tokens_total"] == 3 * tokens["record_tokens"]
    assert sum(row[2] for row in tokens["histogram"]) == 11
    assert all(low <= high for low, high, _ in tokens["histogram"])


def test_a_record_over_max_seq_length_is_warned_with_the_tokens_cut():
    # 400 + 400 characters: 200 content tokens + 8 = 208 tokens; the assistant's start at 100 + 4 + 2 = 106
    valid, report = run(TEN_GOOD + _long(400, 400) + b"\n", max_seq_length=150, max_seq_length_source="upload")
    assert codes(report, "warnings") == [(11, "exceeds_max_seq_length")] and report["ok"]
    message = report["warnings"][0]["message"]
    assert "208 tokens" in message and "max_seq_length 150 (upload)" in message and "last 58" in message
    assert report["tokens"]["truncated_records"] == 1 and report["tokens"]["tokens_cut"] == 58
    assert report["tokens"]["trained_tokens_per_epoch"] == report["tokens"]["record_tokens"] - 58
    assert valid[-1][0] == 11


def test_a_record_whose_assistant_text_is_wholly_cut_is_an_error():
    valid, report = run(TEN_GOOD + _long(400, 400) + b"\n" + _long(4, 4) + b"\n", max_seq_length=106,
                        max_invalid_fraction=0.5)
    assert codes(report) == [(11, "assistant_truncated")] and codes(report, "warnings") == []
    assert "106" in report["errors"][0]["message"]
    assert [line for line, _ in valid] == [*range(1, 11), 12]
    # one token more and the first assistant token survives: a warning only
    _, report = run(TEN_GOOD + _long(400, 400) + b"\n", max_seq_length=107)
    assert codes(report, "warnings") == [(11, "exceeds_max_seq_length")] and report["error_counts"] == {}


def test_a_system_prompt_counts_before_the_assistant():
    _, report = run(TEN_GOOD + _long(4, 4, system_chars=800) + b"\n", max_seq_length=150)
    assert codes(report) == [(11, "assistant_truncated")]


def test_without_max_seq_length_nothing_is_cut():
    _, report = run(TEN_GOOD + _long(40000, 40000) + b"\n")
    assert report["ok"] and report["tokens"]["max_seq_length"] is None and report["tokens"]["tokens_cut"] == 0


def test_every_code_is_in_the_readme_table_with_its_level():
    readme = (PROJECT_ROOT / "README.md").read_text()
    for codes_, level in ((ERROR_CODES, "error"), (WARNING_CODES, "warning")):
        for code in codes_:
            assert f"| `{code}` | {level} |" in readme, code
