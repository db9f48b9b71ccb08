"""`chatft convert`: each input format to chat JSONL that the validator accepts, detection, dropped records with
their reasons, and streaming in flat memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from shared.validation import Validator, read_chunks

from .conftest import PROJECT_ROOT


_STATE: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
def _state_dir(tmp_path_factory):
    """A local state folder of the tests' own (no stand-in model built there: counts are estimated)."""
    _STATE["dir"] = str(tmp_path_factory.mktemp("convert-state"))


def chatft(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VALIDATION_", "TOKENIZER_DIR"))}
    state = env.pop("CHATFT_STATE_DIR", None) or _STATE["dir"]
    return subprocess.run([sys.executable, "-m", "chatft_local", *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env={**clean, "CHATFT_STATE_DIR": state, **env}, timeout=300)


def validated(path: Path) -> tuple[list[dict], dict]:
    """The records of a converted file and the validator's report on it (as `chatft validate` checks it)."""
    validator = Validator()
    with open(path, "rb") as stream:
        records = [v.record for v in validator.records(read_chunks(stream))]
    return records, validator.report().model_dump(mode="json")


def sharegpt(i: int) -> dict:
    return {"id": f"sg-{i}", "conversations": [{"from": "system", "value": "Be brief."},
                                               {"from": "human", "value": f"question {i}"},
                                               {"from": "gpt", "value": f"answer {i}"}]}


def alpaca(i: int) -> dict:
    return {"instruction": f"Translate {i}", "input": "" if i % 2 else f"text {i}", "output": f"result {i}"}


def prompt_completion(i: int) -> dict:
    return {"prompt": f"Q: {i}\n\n###\n\n", "completion": f" A{i} END"}


def chat(i: int, **extra) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"answer {i}"}], **extra}


def write_jsonl(path: Path, records) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_sharegpt_json_array_is_detected_and_converted(tmp_path):
    source = tmp_path / "sharegpt.json"
    source.write_text(json.dumps([sharegpt(i) for i in range(12)], indent=2))
    result = chatft("convert", str(source), str(tmp_path / "out.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "detected: a JSON array of ShareGPT records" in result.stderr
    records, report = validated(tmp_path / "out.jsonl")
    assert report["ok"] and report["warning_counts"] == {} and len(records) == 12
    assert records[3] == {"prompt_id": "sg-3", "messages": [{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": "question 3"},
                                                            {"role": "assistant", "content": "answer 3"}]}


def test_alpaca_jsonl(tmp_path):
    source = write_jsonl(tmp_path / "alpaca.jsonl", [alpaca(i) for i in range(12)])
    result = chatft("convert", str(source), str(tmp_path / "out.jsonl"), "--from", "alpaca")
    assert result.returncode == 0, result.stderr
    records, report = validated(tmp_path / "out.jsonl")
    assert report["ok"] and len(records) == 12
    assert records[0]["messages"] == [{"role": "user", "content": "Translate 0\n\ntext 0"},
                                      {"role": "assistant", "content": "result 0"}]
    assert records[1]["messages"][0]["content"] == "Translate 1"  # an empty input adds nothing


def test_legacy_prompt_completion_is_detected(tmp_path):
    source = write_jsonl(tmp_path / "legacy.jsonl", [prompt_completion(i) for i in range(12)])
    result = chatft("convert", str(source), str(tmp_path / "out.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "detected: JSON Lines of prompt/completion records" in result.stderr
    records, report = validated(tmp_path / "out.jsonl")
    assert report["ok"] and records[5]["messages"] == [{"role": "user", "content": "Q: 5\n\n###"},
                                                       {"role": "assistant", "content": "A5 END"}]


def test_pretty_printed_chat_objects(tmp_path):
    source = tmp_path / "pretty.json"
    source.write_text("".join(json.dumps(chat(i, source="web"), indent=2) + "\n" for i in range(12)))
    assert validated(source)[1]["error_counts"] == {"not_json_lines": 1}  # why it needs converting
    result = chatft("convert", str(source), str(tmp_path / "out.jsonl"), "--from", "json")
    assert result.returncode == 0, result.stderr
    assert "JSON objects over several lines of chat records" in result.stderr
    assert "source (12)" in result.stderr  # the extra key, left out
    records, report = validated(tmp_path / "out.jsonl")
    assert report["ok"] and report["warning_counts"] == {} and records[0] == chat(0)


def test_chat_jsonl_with_extra_keys_and_content_parts(tmp_path):
    lines = [chat(i, weight=1, model="gpt-4") for i in range(11)]
    lines.append({"messages": [{"role": "User ", "content": [{"type": "text", "text": "part one"}, "part two"],
                                "name": "ann"},
                               {"role": "assistant", "content": "ok", "weight": 0}]})
    source = write_jsonl(tmp_path / "chat.jsonl", lines)
    result = chatft("convert", str(source), str(tmp_path / "out.jsonl"), "--from", "jsonl")
    assert result.returncode == 0, result.stderr
    records, report = validated(tmp_path / "out.jsonl")
    assert report["ok"] and report["warning_counts"] == {} and len(records) == 12
    assert records[-1]["messages"][0] == {"role": "user", "content": "part one\npart two"}


def test_a_saved_hugging_face_dataset_directory_and_a_parquet_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [sharegpt(i) for i in range(12)]
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:2])}).save_to_disk(
        str(tmp_path / "saved"))
    result = chatft("convert", str(tmp_path / "saved"), str(tmp_path / "out.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "detected: a Hugging Face dataset (split train of train, test) of ShareGPT records" in result.stderr
    records, report = validated(tmp_path / "out.jsonl")
    assert report["ok"] and len(records) == 12

    (tmp_path / "pq" / "data").mkdir(parents=True)
    Dataset.from_list([alpaca(i) for i in range(12)]).to_parquet(str(tmp_path / "pq" / "data" / "train.parquet"))
    result = chatft("convert", str(tmp_path / "pq"), str(tmp_path / "out2.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "Parquet dataset (1 file(s)) of Alpaca records" in result.stderr
    assert validated(tmp_path / "out2.jsonl")[1]["ok"]

    (tmp_path / "arrow").mkdir()
    for arrow in (tmp_path / "saved" / "train").glob("*.arrow"):  # Arrow files alone, without state.json
        (tmp_path / "arrow" / arrow.name).write_bytes(arrow.read_bytes())
    result = chatft("convert", str(tmp_path / "arrow"), str(tmp_path / "out3.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "an Arrow dataset (1 file(s)) of ShareGPT records" in result.stderr
    assert len(validated(tmp_path / "out3.jsonl")[0]) == 12


def test_every_dropped_record_is_named_with_its_reason(tmp_path):
    lines = [orjson.dumps(sharegpt(i)) for i in range(12)]
    tool = sharegpt(90)
    tool["conversations"].insert(2, {"from": "tool", "value": "{}"})
    image = sharegpt(91)
    image["conversations"][1]["value"] = [{"type": "image_url", "image_url": {"url": "x"}}]
    blank = sharegpt(92)
    blank["conversations"][2]["value"] = " \n "
    lines[2:2] = [orjson.dumps(tool), orjson.dumps(image), b"{not json", orjson.dumps(blank), b"[1]"]
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = chatft("convert", str(source), str(tmp_path / "out.jsonl"), "--dropped", str(tmp_path / "d.jsonl"))
    assert result.returncode == 0, result.stderr
    dropped = sorted((d["line"], d["reason"].split(":")[0]) for d in
                     map(json.loads, (tmp_path / "d.jsonl").read_text().splitlines()))
    assert dropped == [(3, "unsupported_role"), (4, "non_text_part"), (5, "invalid_json"), (6, "empty_content"),
                       (7, "not_an_object")]
    assert "dropped line 3: unsupported_role: turn 3 has role 'tool'" in result.stderr
    assert "12 records written, 5 dropped, of 17 read" in result.stdout
    assert validated(tmp_path / "out.jsonl")[1]["ok"]


def test_a_record_training_would_cut_wholly_is_dropped_with_the_validators_reason(tmp_path):
    long = {"messages": [{"role": "user", "content": "u" * 4000}, {"role": "assistant", "content": "a"}]}
    source = write_jsonl(tmp_path / "in.jsonl", [chat(i) for i in range(12)] + [long])
    result = chatft("convert", str(source), str(tmp_path / "out.jsonl"), "--max-seq-length", "512")
    assert "dropped line 13: assistant_truncated:" in result.stderr and result.returncode == 0


def test_unusable_inputs(tmp_path):
    assert chatft("convert", str(tmp_path / "missing.json"), str(tmp_path / "o.jsonl")).returncode == 2
    source = write_jsonl(tmp_path / "few.jsonl", [chat(i) for i in range(3)])
    result = chatft("convert", str(source), str(tmp_path / "o.jsonl"))
    assert result.returncode == 1 and "fewer than Azure ML fine-tuning needs" in result.stderr
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"question": "q", "answer": "a"}] * 12)
    result = chatft("convert", str(unknown), str(tmp_path / "o2.jsonl"))
    assert result.returncode == 2 and "no known record format" in result.stderr and "question" in result.stderr
    assert not (tmp_path / "o2.jsonl").exists()
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes((json.dumps(chat(0)) + "\n").encode("utf-16"))
    result = chatft("convert", str(utf16), str(tmp_path / "o3.jsonl"))
    assert result.returncode == 2 and "UTF-16" in result.stderr


def _peak_rss_mb(*args: str) -> float:
    """The child's own peak RSS (VmHWM: per address space, so not the forking pytest's memory, which
    `ru_maxrss` would include)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VALIDATION_", "TOKENIZER_DIR"))}
    env["CHATFT_STATE_DIR"] = _STATE["dir"]
    code = ("import sys; from chatft_local.cli import main; rc = main(sys.argv[1:]); "
            "sys.stderr.write([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return int(result.stderr.strip().splitlines()[-1].split()[1]) / 1024


@pytest.mark.parametrize("shape", ["array", "jsonl"])
def test_a_large_input_streams_in_flat_memory(tmp_path, shape):
    """A 10x larger input must not take more memory: the array is parsed incrementally, never loaded whole."""
    record = sharegpt(0)
    record["conversations"][2]["value"] = "word " * 400  # about 2 KB a record
    line = orjson.dumps(record)
    peaks = []
    for n in (2_000, 20_000):  # about 4 MB and 40 MB
        source = tmp_path / f"in-{n}.{'json' if shape == 'array' else 'jsonl'}"
        with open(source, "wb") as out:
            if shape == "array":
                out.write(b"[\n" + b",\n".join([line] * n) + b"\n]\n")
            else:
                out.write(b"".join([line + b"\n"] * n))
        peaks.append(_peak_rss_mb("convert", str(source), str(tmp_path / "out.jsonl")))
        assert sum(1 for _ in open(tmp_path / "out.jsonl", "rb")) == n
        source.unlink()
    assert peaks[1] - peaks[0] < 10 and peaks[1] < 150, peaks  # 36 MB more input: not 36 MB more memory


def test_a_file_that_only_starts_like_parquet_is_refused_with_the_reason(tmp_path):
    """Found by the property-based test: "PAR1" and nothing after it made pyarrow raise through `chatft convert`."""
    bogus = tmp_path / "bogus.jsonl"
    bogus.write_bytes(b"PAR1")
    done = chatft("convert", str(bogus), str(tmp_path / "out.jsonl"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "starts like a Parquet file but cannot be read as one" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()
