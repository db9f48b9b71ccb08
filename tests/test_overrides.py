"""Per-upload overrides from blob metadata: every allowed key, valid and malformed, and unknown keys."""

from __future__ import annotations

import pytest

from shared.overrides import APP_KEYS, OVERRIDES, OverrideError, parse_overrides

# metadata key -> (raw value, parsed name, parsed value)
VALID = [
    ("base_model", "Phi-4-mini-instruct", "base_model", "Phi-4-mini-instruct"),
    ("base_model", "mistralai-Mistral-7B-v01.2_x", "base_model", "mistralai-Mistral-7B-v01.2_x"),
    ("epochs", "1", "num_train_epochs", 1),
    ("epochs", " 100 ", "num_train_epochs", 100),
    ("learning_rate", "5e-6", "learning_rate", 5e-6),
    ("learning_rate", "0.5", "learning_rate", 0.5),
    ("lora_r", "1", "lora_r", 1),
    ("lora_r", "256", "lora_r", 256),
    ("lora_alpha", "128", "lora_alpha", 128),
    ("lora_alpha", "16.0", "lora_alpha", 16),  # whole numbers in any form, as every parameter converter reads them
    ("lora_dropout", "0", "lora_dropout", 0.0),
    ("lora_dropout", "0.05", "lora_dropout", 0.05),
    ("max_seq_length", "16", "max_seq_length", 16),
    ("max_seq_length", "131072", "max_seq_length", 131072),
    ("per_device_train_batch_size", "4", "per_device_train_batch_size", 4),
    ("gradient_accumulation_steps", "8", "gradient_accumulation_steps", 8),
    ("lr_scheduler_type", "cosine", "lr_scheduler_type", "cosine"),
    ("lr_scheduler_type", "constant_with_warmup", "lr_scheduler_type", "constant_with_warmup"),
    ("apply_lora", "true", "apply_lora", "true"),
    ("apply_lora", "No", "apply_lora", "false"),
    ("seed", "0", "seed", 0),
    ("seed", "42", "seed", 42),
    ("keep", "TRUE", "keep", True),
    ("keep", "0", "keep", False),
    ("test_fraction", "0", "test_fraction", 0.0),
    ("test_fraction", "0.2", "test_fraction", 0.2),
    ("force", "true", "force", True),
    ("force", "false", "force", False),
    ("eval_gate", "off", "eval_gate", "off"),
    ("eval_metric", "chrf", "eval_metric", "chrf"),
    ("eval_min_improvement", "-0.5", "eval_min_improvement", -0.5),
    ("model_line", "support-bot", "model_line", "support-bot"),
    ("model_line", "Support Bot", "model_line", "support-bot"),  # sanitised, as a folder name is
]

# metadata key -> malformed raw value, and a phrase the message must contain (the expected type/range)
MALFORMED = [
    ("base_model", "../etc/passwd", "a model name"),
    ("base_model", "", "a model name"),
    ("base_model", "Phi 4", "a model name"),
    ("base_model", "x" * 129, "a model name"),
    ("epochs", "0", "an integer from 1 to 100"),
    ("epochs", "101", "an integer from 1 to 100"),
    ("epochs", "2.5", "an integer from 1 to 100"),
    ("epochs", "three", "an integer from 1 to 100"),
    ("learning_rate", "0", "a number above 0 and below 1"),
    ("learning_rate", "1", "a number above 0 and below 1"),
    ("learning_rate", "-1e-5", "a number above 0 and below 1"),
    ("learning_rate", "nan", "a number above 0 and below 1"),
    ("lora_r", "0", "an integer from 1 to 256"),
    ("lora_r", "257", "an integer from 1 to 256"),
    ("lora_alpha", "0", "an integer of at least 1"),
    ("lora_alpha", "16.5", "an integer of at least 1"),
    ("lora_dropout", "1", "a number at least 0 and below 1"),
    ("lora_dropout", "-0.1", "a number at least 0 and below 1"),
    ("lora_dropout", "inf", "a number at least 0 and below 1"),
    ("max_seq_length", "15", "an integer from 16 to 131072"),
    ("max_seq_length", "131073", "an integer from 16 to 131072"),
    ("per_device_train_batch_size", "0", "an integer of at least 1"),
    ("gradient_accumulation_steps", "-2", "an integer of at least 1"),
    ("lr_scheduler_type", "Cosine", "one of linear, cosine"),
    ("lr_scheduler_type", "step", "one of linear, cosine"),
    ("apply_lora", "maybe", "true or false"),
    ("seed", "-1", "an integer from 0 to 4294967295"),
    ("seed", "4294967296", "an integer from 0 to 4294967295"),
    ("keep", "", "true or false"),
    ("test_fraction", "1", "a number at least 0 and below 1"),
    ("eval_gate", "Enforce", "one of enforce, report, off"),
    ("eval_metric", "bleu", "one of eval_loss, perplexity, rougeL, chrf"),
    ("eval_min_improvement", "inf", "a number at least -1e+06 and at most 1e+06"),
    ("test_fraction", "-0.1", "a number at least 0 and below 1"),
    ("force", "always", "true or false"),
    ("model_line", "___", "a model line name"),
    ("model_line", "x" * 30, "at most 29"),
]


@pytest.mark.parametrize("key,raw,name,value", VALID)
def test_each_key_parses_to_its_typed_pipeline_name(key, raw, name, value):
    parsed = parse_overrides({key: raw})
    assert parsed == {name: value}
    assert type(parsed[name]) is type(value)


@pytest.mark.parametrize("key,raw,expected", MALFORMED)
def test_each_key_refuses_a_malformed_value_and_says_what_it_expects(key, raw, expected):
    with pytest.raises(OverrideError) as caught:
        parse_overrides({key: raw})
    (problem,) = caught.value.problems
    assert (problem["key"], problem["code"]) == (key, "malformed_value")
    message = problem["message"]
    assert expected in message and key in message
    assert len(message) < 400  # a long value is shortened, not echoed in full


def test_every_allowed_key_is_covered_by_these_tests():
    assert {k for k, *_ in VALID} == set(OVERRIDES) == {k for k, *_ in MALFORMED}


def test_unknown_key_names_the_allowed_ones():
    with pytest.raises(OverrideError) as caught:
        parse_overrides({"num_train_epochs": "3"})
    (problem,) = caught.value.problems
    assert problem["code"] == "unknown_key" and problem["key"] == "num_train_epochs"
    assert "allowed: apply_lora, base_model, epochs" in problem["message"]


def test_every_problem_is_reported_at_once():
    with pytest.raises(OverrideError) as caught:
        parse_overrides({"epochs": "0", "colour": "blue", "learning_rate": "2e-5", "keep": "perhaps"})
    assert [(p["key"], p["code"]) for p in caught.value.problems] == [
        ("colour", "unknown_key"), ("epochs", "malformed_value"), ("keep", "malformed_value")]
    assert "colour" in str(caught.value) and "epochs" in str(caught.value)


def test_keys_are_case_insensitive_like_blob_metadata():
    assert parse_overrides({"Epochs": "2", "LEARNING_RATE": "1e-4"}) == {"num_train_epochs": 2,
                                                                         "learning_rate": 1e-4}


def test_a_full_set_maps_to_pipeline_and_app_level_names():
    parsed = parse_overrides({"epochs": "2", "learning_rate": "2e-5", "lora_r": "16", "apply_lora": "yes",
                              "base_model": "Phi-4", "keep": "true", "test_fraction": "0.05", "force": "1",
                              "eval_gate": "report", "eval_metric": "rougeL", "eval_min_improvement": "0.01",
                              "model_line": "support-bot"})
    assert parsed == {"num_train_epochs": 2, "learning_rate": 2e-5, "lora_r": 16, "apply_lora": "true",
                      "base_model": "Phi-4", "keep": True, "test_fraction": 0.05, "force": True, "eval_gate": "report",
                      "eval_metric": "rougeL", "eval_min_improvement": 0.01, "model_line": "support-bot"}
    assert set(APP_KEYS) <= set(parsed)


def test_no_metadata_means_no_overrides():
    assert parse_overrides({}) == {}


def test_the_quality_gates_overrides_are_checked():
    with pytest.raises(OverrideError) as caught:
        parse_overrides({"eval_gate": "lenient", "eval_metric": "bleu", "eval_min_improvement": "a lot"})
    text = str(caught.value)
    assert "eval_gate='lenient' must be one of enforce, report, off" in text
    assert "eval_metric='bleu' must be one of eval_loss, perplexity, rougeL, chrf" in text
    assert "eval_min_improvement='a lot' must be a number" in text
