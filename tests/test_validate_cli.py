"""`chatft validate FILE`: exit codes 0/1/2, the human summary and the JSON report, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import pytest

from .conftest import PROJECT_ROOT


def good(i: int) -> bytes:
    return orjson.dumps({"prompt_id": f"id-{i}", "messages": [{"role": "user", "content": f"q{i}"},
                                                               {"role": "assistant", "content": f"a{i}"}]})


def chatft(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VALIDATION_")}
    return subprocess.run([sys.executable, "-m", "chatft_local", *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env={**clean, **env}, timeout=60)


@pytest.fixture
def valid_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"".join(good(i) + b"\n" for i in range(12)))
    return path


@pytest.fixture
def invalid_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [good(i) for i in range(12)]
    lines[4] = b'{"messages": [{"role": "user", "content": "q"}]}'
    lines[7] = b"{not json"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    return path


def test_a_valid_file_exits_0_with_a_summary(valid_file):
    result = chatft("validate", str(valid_file))
    assert result.returncode == 0, result.stderr
    assert f"{valid_file}: valid" in result.stdout
    assert "records 12, valid 12, invalid 0" in result.stdout
    assert "tokens" in result.stdout and "estimate" in result.stdout


def test_an_invalid_file_exits_1_and_lists_lines_and_codes(invalid_file):
    result = chatft("validate", str(invalid_file))
    assert result.returncode == 1
    out = result.stdout
    assert "INVALID: 2 of 12 records are invalid" in out
    assert "line 5: too_few_messages:" in out and "line 5: no_assistant_message:" in out
    assert "line 8: invalid_json:" in out
    assert "errors (3): " in out and "too_few_messages 1" in out
    assert "line 13: blank_line:" in out


def test_json_prints_the_whole_report(invalid_file):
    result = chatft("validate", str(invalid_file), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["invalid_records"] == 2
    assert {"line": 8, "code": "invalid_json"}.items() <= report["errors"][-1].items()
    assert report["bytes"] == invalid_file.stat().st_size


def test_settings_set_the_policy(invalid_file):
    result = chatft("validate", str(invalid_file), "--json", VALIDATION_MAX_INVALID_FRACTION="0.2",
                    VALIDATION_REPORT_MAX_ISSUES="1")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["ok"] and len(report["errors"]) == 1 and sum(report["error_counts"].values()) == 3
    result = chatft("validate", str(invalid_file), VALIDATION_MAX_RECORD_BYTES="20")
    assert result.returncode == 1 and "record_too_large" in result.stdout


def test_show_limits_the_listed_issues(invalid_file):
    result = chatft("validate", str(invalid_file), "--show", "1")
    assert result.returncode == 1
    assert "line 8:" not in result.stdout and "... 2 more (--json for the report)" in result.stdout


@pytest.mark.parametrize("target", ["missing.jsonl", "."])
def test_a_missing_file_or_a_directory_exits_2(tmp_path, target):
    result = chatft("validate", str(tmp_path / target))
    assert result.returncode == 2
    assert "cannot read" in result.stderr and result.stdout == ""


def test_unusable_arguments_and_settings_exit_2(valid_file):
    assert chatft("validate").returncode == 2
    assert chatft("validate", str(valid_file), "--show", "many").returncode == 2
    result = chatft("validate", str(valid_file), VALIDATION_MAX_INVALID_FRACTION="lots")
    assert result.returncode == 2 and "VALIDATION_MAX_INVALID_FRACTION" in result.stderr


def test_an_empty_file_is_invalid(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = chatft("validate", str(path))
    assert result.returncode == 1 and "line 0: empty_file:" in result.stdout


def test_max_seq_length_and_the_token_distribution(tmp_path):
    path = tmp_path / "long.jsonl"
    long = orjson.dumps({"messages": [{"role": "user", "content": "u" * 400}, {"role": "assistant", "content": "a" * 400}]})
    cut = orjson.dumps({"messages": [{"role": "user", "content": "u" * 800}, {"role": "assistant", "content": "a"}]})
    path.write_bytes(b"".join(good(i) + b"\n" for i in range(12)) + long + b"\n" + cut + b"\n")
    result = chatft("validate", str(path), "--max-seq-length", "150", "--epochs", "2",
                    CHATFT_STATE_DIR=str(tmp_path / "state"), VALIDATION_MAX_INVALID_FRACTION="0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "line 13: exceeds_max_seq_length: 208 tokens, over max_seq_length 150 (--max-seq-length)" in out
    assert "line 14: assistant_truncated:" in out
    assert "min 10, p50 10, p95 208, max 208" in out  # ceil(2 / 4) a content + 8: as Estimate.count and "#" in out
    assert "max_seq_length 150 (--max-seq-length): 1 record(s) truncated, 58 tokens cut" in out
    assert "x 2 epochs" in out and "estimate" in out
    report = json.loads(chatft("validate", str(path), "--json", "--max-seq-length", "150",
                               CHATFT_STATE_DIR=str(tmp_path / "state")).stdout)
    assert report["tokens"]["max_seq_length"] == 150 and report["error_counts"] == {"assistant_truncated": 1}


def test_the_local_base_model_default_and_a_bad_max_seq_length(tmp_path, valid_file):
    result = chatft("validate", str(valid_file), CHATFT_STATE_DIR=str(tmp_path / "state"))
    assert "max_seq_length 384 (the base model's default)" in result.stdout  # the stand-in's tag
    assert chatft("validate", str(valid_file), "--max-seq-length", "0").returncode == 2


def test_tokenizer_dir_counts_with_the_named_tokenizer(tmp_path, valid_file):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    report = json.loads(chatft("validate", str(valid_file), "--json", TOKENIZER_DIR=str(tmp_path),
                               CHATFT_STATE_DIR=str(tmp_path / "state")).stdout)
    assert report["tokens"]["method"] == f"tokenizer: {tmp_path / 'tokenizer.json'}"
    assert report["tokens"]["max"] == 1 + 1 + 8  # one word a message
    report = json.loads(chatft("validate", str(valid_file), "--json", TOKENIZER_DIR=str(tmp_path / "none"),
                               CHATFT_STATE_DIR=str(tmp_path / "state")).stdout)
    assert report["tokens"]["method"].startswith("estimate") and "no tokenizer.json" in report["tokens"]["note"]
