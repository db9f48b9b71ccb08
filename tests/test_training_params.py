"""Fine-tuning parameters and preflight checks (pure): the notebook's defaults, merge order, typing to the
component spec's forms, display name, archived models, compute and instance-type allow-lists."""

import logging
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.ml.port import PermanentError
from shared.ml.training_params import (NOTEBOOK_DEFAULTS, PIPELINE_INPUTS, InputSpec, archive_reason,
                                       archived_model_error, check_finetune_compute, check_inference_instance_type,
                                       display_name, finetune_parameters, gpus_per_node, merge_parameters,
                                       pipeline_parameters, registered_model_name, tag_literal)
from tests.conftest import REFERENCE
from tests.fakes import PHI3_MINI_TAGS

SPEC = REFERENCE / "chat_completion_pipeline.spec.yaml"
NOTEBOOK_TYPED = {"num_train_epochs": 3, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
                  "learning_rate": 5e-6, "lr_scheduler_type": "cosine", "apply_lora": "true",
                  "apply_deepspeed": "true", "deepspeed_stage": "2"}


def spec_inputs():
    if not SPEC.exists():
        pytest.skip(f"component spec not found at {SPEC} (public reference material, kept outside the repo)")
    import yaml

    return yaml.safe_load(SPEC.read_text())["inputs"]


# ------------------------------------------------------------------ merge order and typing


def test_without_model_tags_the_notebooks_parameters_are_used_typed_as_the_spec_wants():
    assert NOTEBOOK_DEFAULTS["deepspeed_stage"] == 2  # as the notebook writes it ...
    assert finetune_parameters({}, {}) == NOTEBOOK_TYPED  # ... and as the component takes it


def test_model_specific_defaults_override_the_notebook_and_say_what_they_changed(caplog):
    with caplog.at_level(logging.WARNING, logger="shared.ml.training_params"):
        params = finetune_parameters(PHI3_MINI_TAGS, {})
    assert params["num_train_epochs"] == 1 and params["precision"] == "16" and params["save_total_limit"] == 1
    assert params["deepspeed_stage"] == "2" and params["apply_lora"] == "true"
    assert "learning_rate_max" not in params  # in the tag, but not an input of the component
    changed = next(r.getMessage() for r in caplog.records if "model_specific_defaults" in r.getMessage())
    assert "num_train_epochs=1" in changed and "precision=16" in changed
    assert "apply_lora" not in changed  # same value as the notebook's: not a change
    assert any("learning_rate_max" in r.getMessage() for r in caplog.records)


def test_upload_overrides_win_over_model_tags_and_app_keys_are_dropped(caplog):
    overrides = {"num_train_epochs": 2, "learning_rate": 1e-5, "apply_lora": "false", "lora_r": 16,
                 "max_seq_length": 512, "lr_scheduler_type": "linear", "seed": 7, "gradient_accumulation_steps": 4,
                 "per_device_train_batch_size": 2, "base_model": "Phi-4", "keep": True, "test_fraction": 0.2}
    with caplog.at_level(logging.WARNING):
        params = finetune_parameters(PHI3_MINI_TAGS, overrides)
    for key in ("base_model", "keep", "test_fraction"):
        assert key not in params
        assert not any(key in r.getMessage() for r in caplog.records)  # app keys are not a surprise: no warning
    assert params["num_train_epochs"] == 2 and params["learning_rate"] == 1e-5 and params["apply_lora"] == "false"
    assert params["lora_r"] == 16 and params["max_seq_length"] == 512 and params["seed"] == 7
    assert params["precision"] == "16"  # from the tag, untouched by the upload


def test_merge_keeps_raw_values_for_typing_later():
    merged = merge_parameters({"model_specific_defaults": "{'deepspeed_stage': 3}"}, {"apply_lora": True})
    assert merged["deepspeed_stage"] == 3 and merged["apply_lora"] is True


def test_inputs_the_app_sets_itself_never_come_from_tags_or_uploads():
    tags = {"model_specific_defaults": "{'compute_finetune': 'serverless', 'number_of_gpu_to_use_finetuning': 8}"}
    params = finetune_parameters(tags, {"mlflow_model_path": "elsewhere", "train_file_path": "x"})
    assert not {"compute_finetune", "number_of_gpu_to_use_finetuning", "mlflow_model_path",
                "train_file_path"} & set(params)


@pytest.mark.parametrize("key, value, typed", [
    ("apply_lora", True, "true"), ("apply_lora", "False", "false"), ("apply_deepspeed", False, "false"),
    ("deepspeed_stage", 3, "3"), ("deepspeed_stage", 3.0, "3"), ("deepspeed_stage", "2", "2"),
    ("precision", 16, "16"), ("num_train_epochs", "4", 4), ("num_train_epochs", 2.0, 2),
    ("learning_rate", "1e-5", 1e-5), ("learning_rate", 1, 1.0), ("max_seq_length", -1, -1),
    ("lr_scheduler_type", "cosine_with_restarts", "cosine_with_restarts"), ("shm_size_finetune", "8g", "8g"),
])
def test_values_are_typed_to_the_spec(key, value, typed):
    result = pipeline_parameters({key: value})[key]
    assert result == typed and type(result) is type(typed)


@pytest.mark.parametrize("key, value", [
    ("deepspeed_stage", 4), ("apply_lora", "maybe"), ("num_train_epochs", 0), ("num_train_epochs", 2.5),
    ("num_train_epochs", True), ("num_train_epochs", "three"), ("learning_rate", "nan"), ("learning_rate", False),
    ("lr_scheduler_type", "Cosine"), ("precision", 8),
])
def test_a_value_the_input_cannot_take_is_refused_by_name(key, value):
    with pytest.raises(PermanentError, match=f"parameter {key}="):
        pipeline_parameters({key: value})


def test_boolean_inputs_of_other_components_are_typed_too():
    inputs = {"flag": InputSpec("boolean"), "path": InputSpec("uri_file")}
    assert pipeline_parameters({"flag": "TRUE", "path": "x"}, inputs) == {"flag": True}
    with pytest.raises(PermanentError):
        pipeline_parameters({"flag": "yes"}, inputs)


@pytest.mark.parametrize("tags, message", [
    ({"model_specific_defaults": "{'a': "}, "not a Python literal"),
    ({"model_specific_defaults": "['a']"}, "not a dict literal"),
    ({"model_specific_defaults": "__import__('os')"}, "not a Python literal"),
])
def test_a_malformed_model_tag_is_refused_naming_it(tags, message):
    with pytest.raises(PermanentError, match=message):
        finetune_parameters(tags, {})


def test_tag_literal_takes_strings_and_parsed_values():
    assert tag_literal({"x": "['A', 'B']"}, "x") == ["A", "B"]
    assert tag_literal({"x": ["A"]}, "x") == ["A"]
    assert tag_literal({}, "x") is None and tag_literal(None, "x") is None


_SCALARS = st.one_of(st.booleans(), st.integers(-5, 10), st.floats(allow_nan=True), st.text(max_size=8),
                     st.sampled_from(["true", "false", "2", "3", "cosine", "16"]))


@given(st.dictionaries(st.one_of(st.sampled_from(sorted(PIPELINE_INPUTS)), st.text(max_size=12)), _SCALARS,
                       max_size=8))
def test_whatever_goes_in_only_spec_inputs_with_accepted_values_come_out(values):
    try:
        typed = pipeline_parameters(values)
    except PermanentError:
        return
    for key, value in typed.items():
        spec = PIPELINE_INPUTS[key]
        if spec.enum:
            assert value in spec.enum
        elif spec.type == "integer":
            assert type(value) is int and (spec.min is None or value >= spec.min)
        elif spec.type == "number":
            assert type(value) is float
        else:
            assert type(value) is str


def test_the_input_table_is_the_reference_spec():
    inputs = spec_inputs()
    scalar = {name: spec for name, spec in inputs.items() if spec["type"] in ("string", "integer", "number")}
    assert set(PIPELINE_INPUTS) == set(scalar)
    for name, spec in scalar.items():
        mine = PIPELINE_INPUTS[name]
        assert mine.type == spec["type"], name
        assert mine.enum == tuple(str(e) for e in spec.get("enum", ())), name
        assert mine.min == spec.get("min"), name


# ------------------------------------------------------------------ names


def test_display_name_with_the_notebooks_parameters():
    assert display_name("Phi-3-mini-4k-instruct", NOTEBOOK_TYPED, 1) == \
        "Phi-3-mini-4k-instruct-ultrachat-bs1-cosine-ds2-lora-save_limit-1-seqlen-1"


def test_display_name_multiplies_the_batch_and_names_each_choice():
    params = {**finetune_parameters(PHI3_MINI_TAGS, {"gradient_accumulation_steps": 2, "max_seq_length": 1024,
                                                     "per_device_train_batch_size": 3}), "num_nodes_finetune": 2}
    assert display_name("Phi-3-mini-4k-instruct", params, 4, dataset="support-chats") == \
        "Phi-3-mini-4k-instruct-support-chats-bs48-cosine-ds2-lora-save_limit1-seqlen1024"
    plain = finetune_parameters({}, {"apply_lora": False, "lr_scheduler_type": "linear"})
    plain["apply_deepspeed"] = "false"
    assert display_name("m", plain, 1) == "m-ultrachat-bs1-linear-nods-nolora-save_limit-1-seqlen-1"
    assert display_name("m", {"apply_deepspeed": "true", "deepspeed_stage": "3"}, 2) == \
        "m-ultrachat-bs2-linear-ds3-nolora-save_limit-1-seqlen-1"


def test_registered_model_name_is_the_notebooks():
    assert registered_model_name("Phi-3-mini-4k-instruct", "ultrachat-200k") == "Phi-3-mini-4k-instruct-ultrachat-200k"
    assert registered_model_name("microsoft/phi-4", "support") == "microsoft-phi-4-support"


# ------------------------------------------------------------------ archived models


@pytest.mark.parametrize("stage, tags, reason", [
    ("Archived", {}, "stage is Archived"),
    ("archived", {}, "stage is Archived"),
    (None, {"FinetuneRetirementDate": "2025-08-30"}, "retired on 2025-08-30"),
    ("", {"FinetuneRetirementDate": "2026-01-10"}, "retired on 2026-01-10"),  # the day itself counts
])
def test_archived_or_retired_models_have_a_reason(stage, tags, reason):
    assert reason in archive_reason(stage, tags, date(2026, 1, 10))


@pytest.mark.parametrize("stage, tags", [
    (None, {}), ("Production", None), (None, {"FinetuneRetirementDate": "2099-01-01"}),
    (None, {"FinetuneRetirementDate": "soon"}), (None, {"InferenceRetirementDate": "2020-01-01"}),
])
def test_active_models_have_no_reason(stage, tags):
    assert archive_reason(stage, tags, date(2026, 1, 10)) is None


def test_archived_message_names_the_model_and_the_way_out():
    message = str(archived_model_error("Phi-3-mini-4k-instruct", "azureml", "its stage is Archived"))
    assert "Phi-3-mini-4k-instruct" in message and "azureml" in message and "set BASE_MODEL" in message


# ------------------------------------------------------------------ compute and instance type


ALLOW = {"finetune_compute_allow_list": "['Standard_NC24ads_A100_v4', 'Standard_ND96asr_v4']"}


@pytest.mark.parametrize("size, state, tags", [
    ("standard_nc24ads_a100_v4", "Succeeded", ALLOW),  # case-insensitive
    ("Standard_NC6s_v3", "Succeeded", {}),  # no allow-list: anything but K80
    ("Standard_NC6s_v3", None, None),
])
def test_accepted_computes(size, state, tags):
    check_finetune_compute("gpu", size, state, tags)


@pytest.mark.parametrize("size, state, tags, message", [
    ("Standard_NC24ads_A100_v4", "Failed", ALLOW, "failed provisioning state"),
    ("Standard_NC6s_v3", "Succeeded", ALLOW, "Standard_ND96asr_v4"),  # lists the allowed sizes
    ("Standard_NC24r", "Succeeded", {}, "K80"),
    ("standard_nc6", "Succeeded", None, "K80"),
])
def test_refused_computes(size, state, tags, message):
    with pytest.raises(PermanentError, match=message):
        check_finetune_compute("gpu", size, state, tags)


def test_gpus_per_node_come_from_the_matching_sku():
    sizes = [("Standard_DS3_v2", 0), ("Standard_NC48ads_A100_v4", 2)]
    assert gpus_per_node("gpu", "standard_nc48ads_a100_v4", sizes) == 2
    with pytest.raises(PermanentError, match="available SKUs: Standard_DS3_v2, Standard_NC48ads_A100_v4"):
        gpus_per_node("gpu", "Standard_NC6s_v3", sizes)
    with pytest.raises(PermanentError, match="no GPU"):
        gpus_per_node("cpu", "Standard_DS3_v2", sizes)


def test_inference_instance_type_is_checked_against_the_models_allow_list():
    tags = {"inference_compute_allow_list": "['Standard_NC6s_v3', 'Standard_NC12s_v3']"}
    check_inference_instance_type("standard_nc6s_v3", tags)
    check_inference_instance_type("Standard_DS3_v2", {})  # no allow-list: no check
    with pytest.raises(PermanentError, match="INFERENCE_INSTANCE_TYPE Standard_DS3_v2.*Standard_NC12s_v3"):
        check_inference_instance_type("Standard_DS3_v2", tags)


def test_empty_inference_instance_type_takes_the_first_current_size_of_the_allow_list():
    from shared.ml.training_params import resolve_inference_instance_type

    tags = {"inference_compute_allow_list": "['Standard_NC6s_v3', 'Standard_NC24ads_A100_v4', 'Standard_NC48ads_A100_v4']"}
    # Standard_NC6s_v3 is first but retired (2025-09-30): never chosen by default.
    assert resolve_inference_instance_type("", tags) == "Standard_NC24ads_A100_v4"
    assert resolve_inference_instance_type("Standard_NC48ads_A100_v4", tags) == "Standard_NC48ads_A100_v4"
    with pytest.raises(PermanentError, match="INFERENCE_INSTANCE_TYPE Standard_DS3_v2"):
        resolve_inference_instance_type("Standard_DS3_v2", tags)
    with pytest.raises(PermanentError, match="INFERENCE_INSTANCE_TYPE is empty.*set INFERENCE_INSTANCE_TYPE"):
        resolve_inference_instance_type("", {})
    with pytest.raises(PermanentError, match="only retired sizes: Standard_NC6s_v3"):
        resolve_inference_instance_type("", {"inference_compute_allow_list": "['Standard_NC6s_v3']"})
    assert resolve_inference_instance_type("", {}, fallback="local") == "local"
    assert resolve_inference_instance_type("Standard_DS3_v2", {}) == "Standard_DS3_v2"  # no list: no check
