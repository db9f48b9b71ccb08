"""The local workspace's base model and trainer: built offline, really trained on CPU, checked from the outside."""

from __future__ import annotations

import ast
import json
import math
import threading
from pathlib import Path

import pytest

from chatft_local.workspace.base_model import (CHAT_TEMPLATE, TINY_NAME, BaseModelError, _build_tiny,
                                               ensure_base_model)

TOPICS = [
    ("photosynthesis", "plants turn sunlight, water and carbon dioxide into sugar and oxygen"),
    ("a rainbow", "sunlight is bent and split into colors by drops of rain"),
    ("the water cycle", "water evaporates, forms clouds and falls again as rain"),
    ("a volcano", "hot melted rock rises from deep inside the earth and erupts"),
    ("gravity", "every mass pulls on every other mass"),
    ("the moon's phases", "we see different parts of the moon lit by the sun"),
    ("a computer program", "a computer follows a list of instructions step by step"),
    ("recycling", "used materials are collected and made into new products"),
    ("vaccines", "the body learns to recognise a germ without getting sick"),
    ("the seasons", "the tilted earth gets more or less sunlight during the year"),
]
ASKS = [
    ("Can you explain {t} in simple words?", "Sure! In simple words, {t} means that {w}."),
    ("What is {t}?", "Good question. {T} is what happens when {w}."),
    ("Please describe {t} for a child.", "Of course. Imagine this: {w}. That is {t}."),
    ("Why does {t} matter?", "It matters because {w}, and that shapes the world around us."),
    ("Give me one fact about {t}.", "Here is one fact: {w}."),
]


def chat_records(count: int = 50) -> list[dict]:
    """Ultrachat-shaped records: varied topics and phrasings over a few repeated answer shapes (so a tiny model
    can learn them), some with a system message, some with a second turn."""
    records = []
    for i in range(count):
        topic, what = TOPICS[i % len(TOPICS)]
        ask, answer = ASKS[(i // len(TOPICS) + i) % len(ASKS)]
        question = ask.format(t=topic)
        messages = []
        if i % 3 == 0:
            messages.append({"role": "system", "content": "You are a friendly teacher who answers briefly."})
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer.format(t=topic, T=topic[0].upper() + topic[1:], w=what)}]
        if i % 4 == 1:
            messages += [{"role": "user", "content": "Thank you!"},
                         {"role": "assistant", "content": f"You are welcome. Ask me more about {topic} any time."}]
        records.append({"prompt": question, "messages": messages, "prompt_id": f"{i:064x}"})
    return records


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_base_model(tmp_path_factory.mktemp("state"))


# ------------------------------------------------------------------------------------------ base model


def test_tiny_base_model_is_a_cached_hf_directory_with_phi3_chat_format(tiny, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    assert tiny.name == TINY_NAME and Path(tiny.path, "config.json").is_file()
    assert AutoConfig.from_pretrained(tiny.path).model_type == "phi3"
    tokenizer = AutoTokenizer.from_pretrained(tiny.path)
    text = tokenizer.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                          {"role": "assistant", "content": "A"}], tokenize=False)
    assert text == "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\nA<|end|>\n"
    assert tokenizer.eos_token == "<|end|>"
    defaults = ast.literal_eval(tiny.tags["model_specific_defaults"])
    assert isinstance(defaults, dict) and defaults["learning_rate"] > 1e-4
    # The second call reuses the build.
    state = Path(tiny.path).parents[3]
    assert ensure_base_model(state) == tiny


def test_concurrent_builds_leave_one_whole_model(tmp_path):
    target = tmp_path / "phi3-tiny" / "1"
    errors = []

    def build():
        try:
            _build_tiny(target)
        except Exception as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    assert [p.name for p in target.parent.iterdir()] == ["1"]  # no scratch directory left behind


@pytest.mark.parametrize("case", ["missing", "no-config", "not-causal", "no-weights"])
def test_unusable_local_base_model_is_a_clear_error(tmp_path, case):
    path = tmp_path / "model"
    if case != "missing":
        path.mkdir()
    if case == "not-causal":
        (path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    if case == "no-weights":
        (path / "config.json").write_text(json.dumps({"architectures": ["Phi3ForCausalLM"]}))
        (path / "tokenizer.json").write_text("{}")
    with pytest.raises(BaseModelError) as error:
        ensure_base_model(tmp_path / "state", str(path))
    assert isinstance(error.value, ValueError)
    assert "LOCAL_BASE_MODEL" in str(error.value) and str(path) in str(error.value)


def test_local_base_model_directory_is_used_as_is(tiny, tmp_path):
    info = ensure_base_model(tmp_path / "state", tiny.path)
    assert info.path == tiny.path and info.version == "local"
    assert "model_specific_defaults" not in info.tags  # the notebook's defaults apply to a real model
    assert not (tmp_path / "state").exists()  # nothing built


# ------------------------------------------------------------------------------------------ parameters


def test_parameters_take_the_specs_string_forms():
    from chatft_local.workspace.trainer import TrainingParams, TrainingError, unused_parameters

    params = {"apply_lora": "true", "num_train_epochs": "2", "learning_rate": "2e-3", "lora_dropout": 0,
              "per_device_train_batch_size": 4.0, "lr_scheduler_type": "cosine", "apply_deepspeed": "true"}
    typed = TrainingParams.from_params(params)
    assert (typed.apply_lora, typed.num_train_epochs, typed.learning_rate, typed.per_device_train_batch_size) == \
        (True, 2, 2e-3, 4)
    assert TrainingParams.from_params({"apply_lora": "false"}).apply_lora is False
    assert unused_parameters(params) == ["apply_deepspeed"]
    for bad in ({"num_train_epochs": "many"}, {"num_train_epochs": 1.5}, {"apply_lora": "yes"},
                {"learning_rate": "nan"}, {"seed": True}):
        with pytest.raises(TrainingError, match=next(iter(bad))):
            TrainingParams.from_params(bad)


# ------------------------------------------------------------------------------------------ loss masking


def _trained_text(trainer, tokenizer) -> list[str]:
    """The text of the tokens each training row computes loss on."""
    return [tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
            for row in trainer.train_dataset]


def _assistant_text(record: dict, turn_end: str = "<|end|>") -> str:
    return "".join(m["content"] + turn_end for m in record["messages"] if m["role"] == "assistant")


def _settings(**overrides):
    from chatft_local.workspace.trainer import TrainingParams

    return TrainingParams.from_params({"max_seq_length": 384, "apply_lora": "true", **overrides})


def test_loss_is_on_assistant_tokens_only(tiny, tmp_path):
    from chatft_local.workspace.trainer import build_trainer

    records = chat_records(12)
    trainer, tokenizer = build_trainer(tiny.path, [{"messages": r["messages"]} for r in records], [], _settings(),
                                       str(tmp_path / "work"))
    assert trainer.args.assistant_only_loss  # the tiny template's generation markers are used
    assert _trained_text(trainer, tokenizer) == [_assistant_text(r) for r in records]
    labels = trainer.train_dataset[0]["labels"]
    assert labels.count(-100) > 0  # system/user turns and role tags are masked


def test_templates_without_generation_markers_are_masked_by_prefix_rendering(tiny, tmp_path):
    from transformers import AutoTokenizer

    from chatft_local.workspace.trainer import assistant_token_masks, build_trainer

    plain = CHAT_TEMPLATE.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    model_dir = tmp_path / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny.path)
    tokenizer.chat_template = plain
    tokenizer.save_pretrained(model_dir)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (model_dir / name).write_bytes(Path(tiny.path, name).read_bytes())

    records = chat_records(12)
    masked = assistant_token_masks(tokenizer, records[1]["messages"])
    assert len(masked["input_ids"]) == len(masked["assistant_masks"])
    trainer, saved = build_trainer(str(model_dir), [{"messages": r["messages"]} for r in records], [], _settings(),
                                   str(tmp_path / "work"))
    assert not trainer.args.assistant_only_loss  # TRL cannot patch this template: the fallback masks
    # An assistant turn here runs to where the next turn's rendering starts: its line break is trained too.
    assert _trained_text(trainer, saved) == [_assistant_text(r, "<|end|>\n") for r in records]


def test_too_few_rows_or_truncation_that_leaves_too_few_is_refused(tiny, tmp_path):
    from chatft_local.workspace.trainer import TrainingError, build_trainer

    short = [{"messages": r["messages"]} for r in chat_records(12)]
    long_prompt = {"messages": [{"role": "user", "content": "tell me " * 200}, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(TrainingError, match="only 3 of 12 .* max_seq_length 128"):
        build_trainer(tiny.path, short[:3] + [long_prompt] * 9, [], _settings(max_seq_length=128),
                      str(tmp_path / "work"))
    with pytest.raises(TrainingError, match="9 usable training conversations"):
        build_trainer(tiny.path, short[:9], [], _settings(), str(tmp_path / "work"))


# ------------------------------------------------------------------------------------------ fine-tuning


def assistant_loss(model_dir: str, records: list[dict], *, mlflow_model: bool = False) -> float:
    """Mean loss per assistant token of a model over the conversations, computed independently of the trainer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if mlflow_model:
        import mlflow.transformers

        parts = mlflow.transformers.load_model(model_dir, return_type="components")
        model, tokenizer = parts["model"], parts["tokenizer"]
    else:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for record in records:
            out = tokenizer.apply_chat_template(record["messages"], return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids = torch.tensor([out["input_ids"]])
            labels = ids.clone()
            labels[0, torch.tensor(out["assistant_masks"]) == 0] = -100
            n = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


@pytest.mark.slow
def test_fine_tuning_lowers_the_loss_and_writes_a_chat_model_mlflow_can_load(tiny, tmp_path):
    import mlflow
    import mlflow.pyfunc

    from chatft_local.workspace.trainer import TrainingRun, fine_tune

    records = chat_records(50)
    run = TrainingRun(base_model=tiny.path, train_file=write_jsonl(tmp_path / "train.jsonl", records[:45]),
                      test_file=write_jsonl(tmp_path / "test.jsonl", records[45:]),
                      model_dir=str(tmp_path / "outputs" / "mlflow_model_folder"),
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="chat_completion_test",
                      run_name="job-train-1", tags={"chatft.run_id": "run-1"}, work_dir=str(tmp_path / "work"))
    params = {**ast.literal_eval(tiny.tags["model_specific_defaults"]), "apply_lora": "true"}
    progress = []
    metrics = fine_tune(run, params, on_progress=progress.append)

    # The trainer's own figures.
    assert metrics["eval_loss"] < metrics["base_eval_loss"]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert metrics["last_step_loss"] < metrics["first_step_loss"]
    assert metrics["steps"] == progress[-1]["step"] == progress[-1]["total_steps"] > 1
    assert metrics["train_tokens"] > 0 and metrics["tokens_per_second"] > 0

    # Checked from the outside: the saved model fits the training conversations better than the base model.
    base = assistant_loss(tiny.path, records[:45])
    tuned = assistant_loss(run.model_dir, records[:45], mlflow_model=True)
    print(f"assistant-token loss on the training data: base {base:.3f}, fine-tuned {tuned:.3f}; {metrics}")
    assert tuned < base

    # The MLflow model loads back and answers a chat prompt; its weights hold no LoRA leftovers.
    model = mlflow.pyfunc.load_model(run.model_dir)
    answer = model.predict({"messages": [{"role": "user", "content": "What is a rainbow?"}], "max_tokens": 16})
    assert isinstance(answer[0]["choices"][0]["message"]["content"], str)
    from safetensors import safe_open

    with safe_open(str(Path(run.model_dir, "model", "model.safetensors")), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]

    # One MLflow run per job, named after it, with per-step metrics.
    client = mlflow.MlflowClient(run.tracking_uri)
    experiment = client.get_experiment_by_name("chat_completion_test")
    [tracked] = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_name == "job-train-1" and tracked.info.status == "FINISHED"
    assert len(client.get_metric_history(tracked.info.run_id, "loss")) == metrics["steps"]
    assert tracked.data.metrics["eval_loss"] == pytest.approx(metrics["eval_loss"])


@pytest.mark.slow
def test_full_fine_tuning_without_lora(tiny, tmp_path):
    from peft import PeftModel

    from chatft_local.workspace.trainer import build_trainer, train_and_evaluate

    records = [{"messages": r["messages"]} for r in chat_records(12)]
    settings = _settings(apply_lora="false", max_steps=3, learning_rate=1e-2)
    trainer, _ = build_trainer(tiny.path, records, records[:2], settings, str(tmp_path / "work"))
    assert not isinstance(trainer.model, PeftModel)
    metrics = train_and_evaluate(trainer)
    assert metrics["steps"] == 3 and metrics["eval_loss"] < metrics["base_eval_loss"]
