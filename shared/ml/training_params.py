"""Fine-tuning parameters and preflight checks, computed as the notebook computes them. Pure: no SDK import.

Parameters merge in the notebook's order: its defaults, then the base model's `model_specific_defaults` tag,
then the upload's overrides. They are then typed to the component spec's forms (boolean-like inputs are the
strings "true"/"false", enums are strings such as deepspeed_stage "2"/"3", numbers stay numbers), and keys the
component does not take are dropped, so an unknown keyword never reaches the component call. The compute and
model checks refuse, before any GPU time is spent, what the notebook would refuse.
"""

from __future__ import annotations

import ast
import logging
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable, Mapping

from ..overrides import APP_KEYS
from ..values import to_value
from .naming import MODEL_MAX_LEN
from .port import PermanentError

log = logging.getLogger(__name__)

# Notebook step 5.
NOTEBOOK_TRAINING = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "cosine",
}
NOTEBOOK_OPTIMIZATION = {"apply_lora": "true", "apply_deepspeed": "true", "deepspeed_stage": 2}
NOTEBOOK_DEFAULTS = {**NOTEBOOK_TRAINING, **NOTEBOOK_OPTIMIZATION}

# Notebook step 3: K80 sizes, refused when the model carries no allow-list.
UNSUPPORTED_FINETUNE_SIZES = ("standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r")

MODEL_DEFAULTS_TAG = "model_specific_defaults"
FINETUNE_ALLOW_TAG = "finetune_compute_allow_list"
INFERENCE_ALLOW_TAG = "inference_compute_allow_list"
# azureml-assets marks retired models with these date tags (ISO dates); a model past its fine-tuning retirement
# date cannot be fine-tuned any more, whatever else it says.
FINETUNE_RETIREMENT_TAG = "FinetuneRetirementDate"

# Inputs the app sets itself from the run: never taken from a model tag or an upload.
APP_SET_INPUTS = frozenset({
    "mlflow_model_path", "train_file_path", "test_file_path", "number_of_gpu_to_use_finetuning",
    "compute_model_import", "compute_preprocess", "compute_finetune", "compute_model_evaluation",
})


@dataclass(frozen=True)
class InputSpec:
    """What one component input accepts: its type ("string", "integer", "number", "boolean" or an asset type
    such as "uri_file"), its enum (strings) and its minimum."""

    type: str
    enum: tuple[str, ...] = ()
    min: float | None = None


_TF = ("true", "false")


def _specs(kind: str, names: str, enum: tuple[str, ...] = (), min: float | None = None) -> dict[str, InputSpec]:
    return {n: InputSpec(kind, enum, min) for n in names.split()}


# The scalar inputs of chat_completion_pipeline 0.0.82 (the reference spec; a test keeps this table equal to it).
# Backends without the SDK (the fake, the local workspace) type and filter parameters with it; the Azure adapter
# uses the inputs of the component it actually loaded.
PIPELINE_INPUTS: dict[str, InputSpec] = {
    **_specs("string", "trust_remote_code pad_to_max_length apply_lora merge_lora_weights auto_find_batch_size "
                       "enable_full_determinism ignore_mismatched_sizes resume_from_checkpoint apply_early_stopping "
                       "apply_deepspeed apply_ort", _TF),
    **_specs("string", "instance_type_model_import instance_type_preprocess instance_type_finetune "
                       "instance_type_model_evaluation shm_size_finetune huggingface_id evaluation_config_params "
                       "compute_model_import compute_preprocess compute_finetune compute_model_evaluation"),
    "task_name": InputSpec("string", ("ChatCompletion",)),
    "optim": InputSpec("string", ("adamw_torch", "adafactor")),
    "lr_scheduler_type": InputSpec("string", ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                              "constant_with_warmup")),
    "precision": InputSpec("string", ("32", "16")),
    "deepspeed_stage": InputSpec("string", ("2", "3")),
    "evaluation_strategy": InputSpec("string", ("epoch", "steps", "disable")),
    "logging_strategy": InputSpec("string", ("epoch", "steps")),
    "metric_for_best_model": InputSpec("string", ("loss", "f1", "exact")),
    **_specs("integer", "num_nodes_finetune number_of_gpu_to_use_finetuning batch_size num_train_epochs "
                        "per_device_train_batch_size per_device_eval_batch_size", min=1),
    **_specs("integer", "max_seq_length lora_alpha lora_r max_steps warmup_steps gradient_accumulation_steps "
                        "eval_accumulation_steps seed dataloader_num_workers eval_steps logging_steps "
                        "save_total_limit early_stopping_patience"),
    **_specs("number", "lora_dropout learning_rate weight_decay adam_beta1 adam_beta2 adam_epsilon max_grad_norm "
                       "evaluation_steps_interval early_stopping_threshold"),
}


# ------------------------------------------------------------------------------------------ parameters


def tag_literal(tags: Mapping[str, Any] | None, key: str) -> Any | None:
    """The Python literal a model tag holds (registry tags are strings: parsed with `ast.literal_eval`), or None.

    A malformed tag is a PermanentError naming it: the notebook would have failed the same way."""
    if not tags or key not in tags:
        return None
    value = tags[key]
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        raise PermanentError(f"the base model's tag {key} is not a Python literal: {value[:80]!r}") from None


_MISSING = object()


def merge_parameters(model_tags: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Notebook defaults, overridden by the model's `model_specific_defaults` tag, overridden by the upload's own
    overrides (untyped; see `pipeline_parameters`). Logs a warning listing what the model's defaults changed."""
    merged = dict(NOTEBOOK_DEFAULTS)
    model_defaults = tag_literal(model_tags, MODEL_DEFAULTS_TAG)
    if model_defaults is not None:
        if not isinstance(model_defaults, dict):
            raise PermanentError(f"the base model's tag {MODEL_DEFAULTS_TAG} is not a dict literal")
        changed = sorted(k for k, v in model_defaults.items() if merged.get(k, _MISSING) != v)
        if changed:
            log.warning("model_specific_defaults of the base model override the notebook's parameters: %s",
                        ", ".join(f"{k}={model_defaults[k]!r}" for k in changed))
        merged.update(model_defaults)
    merged.update(overrides or {})
    return merged


def pipeline_parameters(values: Mapping[str, Any],
                        inputs: Mapping[str, InputSpec] = PIPELINE_INPUTS) -> dict[str, Any]:
    """`values` typed as the component's inputs want them; keys it does not take as parameters (unknown to the
    spec, app-level, asset inputs, or inputs the app sets itself) are left out. A value the input cannot accept is
    a PermanentError naming the parameter."""
    typed: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in values.items():
        spec = inputs.get(key)
        if key in APP_KEYS:  # the app's own upload overrides, not pipeline inputs
            continue
        if spec is None or key in APP_SET_INPUTS or spec.type not in _CONVERTERS:
            dropped.append(key)
            continue
        if value is None:
            continue
        typed[key] = _CONVERTERS[spec.type](key, value, spec)
    if dropped:
        log.warning("parameters the pipeline component does not take were left out: %s", ", ".join(sorted(dropped)))
    return typed


def finetune_parameters(model_tags: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None,
                        inputs: Mapping[str, InputSpec] = PIPELINE_INPUTS) -> dict[str, Any]:
    """The parameters a fine-tuning job is called with: merged in the notebook's order, typed, filtered."""
    return pipeline_parameters(merge_parameters(model_tags, overrides), inputs)


def _bad(key: str, value: Any, expected: str) -> PermanentError:
    return PermanentError(f"parameter {key}={str(value)[:40]!r} must be {expected}")


def _integer(key: str, value: Any, spec: InputSpec) -> int:
    try:
        number = to_value("integer", value)
    except ValueError:
        raise _bad(key, value, "an integer") from None
    if spec.min is not None and number < spec.min:
        raise _bad(key, value, f"an integer of at least {spec.min:g}")
    return number


def _number(key: str, value: Any, spec: InputSpec) -> float:
    try:
        number = to_value("number", value)
    except ValueError:
        number = None
    if number is None or (spec.min is not None and number < spec.min):
        raise _bad(key, value, "a finite number" + (f" of at least {spec.min:g}" if spec.min is not None else ""))
    return number


def _string(key: str, value: Any, spec: InputSpec) -> str:
    text = to_value("string", value)
    if spec.enum == _TF:
        text = text.lower()
    if spec.enum and text not in spec.enum:
        raise _bad(key, value, "one of " + ", ".join(spec.enum))
    return text


def _boolean(key: str, value: Any, spec: InputSpec) -> bool:
    try:
        return to_value("boolean", value)
    except ValueError:
        raise _bad(key, value, "true or false") from None


_CONVERTERS = {"integer": _integer, "number": _number, "string": _string, "boolean": _boolean}


def display_name(model_name: str, params: Mapping[str, Any], gpus_per_node: int, dataset: str = "ultrachat") -> str:
    """The notebook's pipeline display name:
    `{model}-{dataset}-bs{per_device_bs*grad_accum*gpus_per_node*num_nodes}-{scheduler}-{ds<stage>|nods}-
    {lora|nolora}-save_limit{save_total_limit or -1}-seqlen{max_seq_length or -1}`."""
    batch = (int(params.get("per_device_train_batch_size", 1)) * int(params.get("gradient_accumulation_steps", 1))
             * int(gpus_per_node) * int(params.get("num_nodes_finetune", 1)))
    scheduler = params.get("lr_scheduler_type", "linear")
    deepspeed = f"ds{params.get('deepspeed_stage', '2')}" if str(params.get("apply_deepspeed", "false")) == "true" \
        else "nods"
    lora = "lora" if str(params.get("apply_lora", "false")) == "true" else "nolora"
    return (f"{model_name}-{dataset}-bs{batch}-{scheduler}-{deepspeed}-{lora}"
            f"-save_limit{params.get('save_total_limit', -1)}-seqlen{params.get('max_seq_length', -1)}")


def registered_model_name(base_model: str, dataset: str) -> str:
    """The notebook's name for the fine-tuned model, `{model}-{dataset}` (`Phi-3-mini-4k-instruct-ultrachat-200k` in
    the notebook), with every character Azure's model-name rule refuses ("/", "." as in Phi-3.5-mini-instruct, ...)
    replaced by "-" and cut to its length (`shared.ml.naming.MODEL`)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{base_model}-{dataset}").lstrip("-_")
    return name[:MODEL_MAX_LEN] or "model"


# ------------------------------------------------------------------------------------------ checks


def archive_reason(stage: str | None, tags: Mapping[str, Any] | None, today: date) -> str | None:
    """Why a base model cannot be fine-tuned any more, or None: its stage is Archived, or its
    `FinetuneRetirementDate` tag is today or earlier."""
    if stage and stage.strip().lower() == "archived":
        return "its stage is Archived"
    retired = (tags or {}).get(FINETUNE_RETIREMENT_TAG)
    if retired:
        try:
            when = date.fromisoformat(str(retired).strip()[:10])
        except ValueError:
            return None
        if when <= today:
            return f"its fine-tuning was retired on {when.isoformat()}"
    return None


def archived_model_error(name: str, registry: str, reason: str) -> PermanentError:
    return PermanentError(f"base model {name} in registry {registry} is archived ({reason}); set BASE_MODEL (or the "
                          f"upload's base_model) to a model still offered for fine-tuning, for example Phi-4")


def check_finetune_compute(compute_name: str, vm_size: str, provisioning_state: str | None,
                           model_tags: Mapping[str, Any] | None) -> None:
    """The notebook's compute sanity checks: not failed; VM size in the model's `finetune_compute_allow_list`
    (case-insensitive) or, without one, not an unsupported K80 size."""
    if (provisioning_state or "").lower() == "failed":
        raise PermanentError(f"compute {compute_name} is in a failed provisioning state; recreate it or set "
                             f"AML_COMPUTE to another cluster")
    allow = tag_literal(model_tags, FINETUNE_ALLOW_TAG)
    if allow is not None:
        if vm_size.lower() not in {str(s).lower() for s in allow}:
            raise PermanentError(f"compute {compute_name} has VM size {vm_size}, which the base model does not allow "
                                 f"for fine-tuning; use a cluster of one of: {', '.join(map(str, allow))}")
    elif vm_size.lower() in UNSUPPORTED_FINETUNE_SIZES:
        raise PermanentError(f"compute {compute_name} has VM size {vm_size}, which is not supported for fine-tuning "
                             f"(K80 GPUs)")


# GPUs per VM of the sizes Azure ML fine-tuning allows (the `finetune_compute_allow_list` of the chat models in the
# azureml registry: Phi-3/Phi-4, Llama, Mistral), from Learn's size pages: NC A100 v4 series (NC24ads 1, NC48ads 2,
# NC96ads 4 A100 80GB), ND A100 v4 series (ND96asr_v4 8 A100 40GB), NDm A100 v4 series (ND96amsr 8 A100 80GB), NCads
# H100 v5 series (NC40ads 1, NC80adis 2 H100 NVL), ND H100 v5 series (ND96isr 8 H100).
# Why a table, not `MLClient.compute.list_sizes()`: that call is a subscription-scope GET
# (.../providers/Microsoft.MachineLearningServices/locations/{location}/vmSizes) which a role on the workspace never
# grants; ARM answers 403 (shared/permissions.py). A size's GPU count never changes, so the table is stable; a size
# it lacks is read from Azure where the identity may list sizes, else AML_COMPUTE_GPUS names it.
VM_SIZE_GPUS: dict[str, int] = {s.lower(): n for s, n in (
    ("Standard_NC24ads_A100_v4", 1), ("Standard_NC48ads_A100_v4", 2), ("Standard_NC96ads_A100_v4", 4),
    ("Standard_ND96asr_v4", 8), ("Standard_ND96amsr_A100_v4", 8),
    ("Standard_NC40ads_H100_v5", 1), ("Standard_NC80adis_H100_v5", 2), ("Standard_ND96isr_H100_v5", 8))}
GPUS_SETTING = "AML_COMPUTE_GPUS"


def known_gpus_per_node(vm_size: str, override: int = 0) -> int | None:
    """GPUs per node of `vm_size`: `override` (AML_COMPUTE_GPUS) when above 0, else the table VM_SIZE_GPUS
    (case-insensitive), else None (ask Azure)."""
    if override and override > 0:
        return int(override)
    return VM_SIZE_GPUS.get((vm_size or "").lower())


def unknown_gpus_error(compute_name: str, vm_size: str, why: str) -> PermanentError:
    """The error for a VM size whose GPU count neither the table nor Azure gave: it names AML_COMPUTE_GPUS."""
    return PermanentError(f"number of GPUs of VM size {vm_size} (compute {compute_name}) unknown: {why}; set "
                          f"{GPUS_SETTING} to its GPUs per node")


def gpus_per_node(compute_name: str, vm_size: str, sizes: Iterable[tuple[str, int | None]]) -> int:
    """GPUs of the SKU whose name matches the cluster's VM size (case-insensitive), from the workspace's list of
    sizes; not found, or no GPU, is a PermanentError (listing the available SKUs when not found)."""
    available = []
    for name, gpus in sizes:
        available.append(name)
        if name.lower() == vm_size.lower():
            if not gpus or gpus < 1:
                raise PermanentError(f"compute {compute_name} has VM size {vm_size}, which has no GPU; fine-tuning "
                                     f"runs on GPU compute only")
            return int(gpus)
    raise PermanentError(f"number of GPUs of VM size {vm_size} (compute {compute_name}) not found; available SKUs: "
                         f"{', '.join(sorted(available)) or 'none'}; or set {GPUS_SETTING} to its GPUs per node")


def check_inference_instance_type(instance_type: str, model_tags: Mapping[str, Any] | None) -> None:
    """The deployment's instance type must be in the base model's `inference_compute_allow_list`, when it has one
    (case-insensitive)."""
    allow = tag_literal(model_tags, INFERENCE_ALLOW_TAG)
    if allow is not None and instance_type.lower() not in {str(s).lower() for s in allow}:
        raise PermanentError(f"INFERENCE_INSTANCE_TYPE {instance_type} is not allowed for this base model; use one "
                             f"of: {', '.join(map(str, allow))}")


# VM sizes Azure has retired: a model's allow-list may still name them (tags are written once, sizes retire
# later). NCv3 retired 2025-09-30 (azure-docs, "NCv3 series retirement"); NC/NCv2/ND (K80/P100/P40) before it.
RETIRED_VM_SIZES = frozenset(s.lower() for s in (
    "Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_NC24rs_v3",
    "Standard_NC6s_v2", "Standard_NC12s_v2", "Standard_NC24s_v2", "Standard_NC24rs_v2",
    "Standard_ND6s", "Standard_ND12s", "Standard_ND24s", "Standard_ND24rs", *UNSUPPORTED_FINETUNE_SIZES))


def resolve_inference_instance_type(instance_type: str, model_tags: Mapping[str, Any] | None, *,
                                    fallback: str = "") -> str:
    """The instance type an online deployment of this base model uses. A set `instance_type` (the
    INFERENCE_INSTANCE_TYPE setting) is checked against the model's `inference_compute_allow_list` and returned;
    empty means the first entry of that list that is not a retired size. With no usable list, `fallback` (the
    local workspace, which serves on this machine) or a PermanentError naming INFERENCE_INSTANCE_TYPE."""
    if instance_type:
        check_inference_instance_type(instance_type, model_tags)
        return instance_type
    allow = tag_literal(model_tags, INFERENCE_ALLOW_TAG) or []
    current = [str(s) for s in allow if str(s).lower() not in RETIRED_VM_SIZES]
    if current:
        return current[0]
    if fallback:
        return fallback
    listed = f" (it lists only retired sizes: {', '.join(map(str, allow))})" if allow else ""
    raise PermanentError(f"INFERENCE_INSTANCE_TYPE is empty and the base model has no usable "
                         f"{INFERENCE_ALLOW_TAG} tag{listed}; set INFERENCE_INSTANCE_TYPE to a GPU VM size "
                         f"offered in your region")
