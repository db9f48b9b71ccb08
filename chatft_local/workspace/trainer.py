"""Supervised fine-tuning of a chat model: the local counterpart of the pipeline's finetune step.

TRL's `SFTTrainer` with a peft LoRA adapter (or full fine-tuning with apply_lora "false"), honouring the
pipeline's parameters (`TrainingParams`). Loss is on assistant tokens only, as in Azure ML: through the chat
template's `{% generation %}` markers where it has them (or TRL knows how to add them), else through masks this
module computes by rendering each conversation's prefixes. The base model is evaluated on the test split before
training and the fine-tuned one after (loss, perplexity = exp(loss)). CUDA with bf16 when a GPU is present, CPU
with float32 otherwise; nothing is fetched from a hub.

Metrics go per step to MLflow tracking, one run per job (the job's name) in the job's experiment, on the
workspace's SQLite store. See the curves with

    mlflow ui --backend-store-uri sqlite:///.chatft/workspace/mlflow.db

The output is an MLflow transformers model (task llm/v1/chat) with the LoRA weights merged in: the local
`mlflow_model_folder`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

# Models are local directories: never reach for a hub (set before transformers reads it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import TrainerCallback  # noqa: E402

from evaluation.chat import ROLES, assistant_token_masks, load_conversations  # noqa: E402,F401
from shared.values import to_value  # noqa: E402

from .files import file_lock  # noqa: E402

log = logging.getLogger("chatft.trainer")

# Models above this size train with gradient checkpointing (memory over speed); the stand-in does not need it.
CHECKPOINTING_PARAMETERS = 1_000_000_000
# The pipeline's finetune step refuses fewer training rows than this.
MIN_TRAIN_ROWS = 10
# MLflow metrics are written in batches at most this often (each write is a SQLite transaction).
METRICS_FLUSH_SECONDS = 2.0


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why in one line (it becomes the job's error)."""


@dataclass(frozen=True)
class TrainingParams:
    """The pipeline's finetune parameters a local run honours, with the component's defaults. Values come as
    numbers or as the strings the spec uses ("true"/"false", "3", "2e-5")."""

    num_train_epochs: int = 1
    max_steps: int = -1
    learning_rate: float = 2e-5
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    apply_lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    max_seq_length: int = -1  # -1: the model's maximum
    seed: int = 42
    precision: str = "32"
    evaluation_strategy: str = "epoch"
    eval_steps: int = 500
    logging_steps: int = 1  # the component's default is 10; every step makes the local curves and progress live

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrainingParams":
        """Typed parameters; a value of the wrong form is a TrainingError naming it. Unknown keys are ignored."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if params.get(f.name) is None:
                continue
            raw = params[f.name]
            try:
                values[f.name] = _convert(f.type, raw)
            except (TypeError, ValueError):
                raise TrainingError(f"parameter {f.name}={str(raw)[:40]!r} must be {_FORMS[f.type]}") from None
        return cls(**values)


_FORMS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_KINDS = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def _convert(kind: str, raw: Any) -> Any:
    return to_value(_KINDS[kind], raw)


def unused_parameters(params: Mapping[str, Any]) -> list[str]:
    """Parameters given that a local run does not use (logged, so nobody thinks they took effect)."""
    known = {f.name for f in fields(TrainingParams)}
    return sorted(k for k in params if k not in known)


# ------------------------------------------------------------------------------------------ data


# ------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainingRun:
    """One fine-tuning run: where things are, and how to track it."""

    base_model: str  # a Hugging Face model directory
    train_file: str
    test_file: str  # "" for none
    model_dir: str  # where the MLflow model is written (must not exist yet)
    tracking_uri: str  # e.g. sqlite:///<state>/workspace/mlflow.db
    experiment_name: str
    run_name: str
    tags: Mapping[str, str]
    work_dir: str  # scratch space for the trainer (checkpoints are not kept)


def fine_tune(run: TrainingRun, params: Mapping[str, Any],
              on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fine-tune, evaluate, write the merged MLflow model; returns the metrics (losses, perplexities, steps,
    tokens/s). `on_progress` gets {step, total_steps, loss, epoch} as training goes."""
    import datasets
    import mlflow
    import transformers

    # The job's log is a file: progress bars would fill it with carriage returns.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    settings = TrainingParams.from_params(params)
    skipped = unused_parameters(params)
    if skipped:
        log.info("parameters with no local effect: %s", ", ".join(skipped))
    train_rows = load_conversations(run.train_file)
    test_rows = load_conversations(run.test_file) if run.test_file else []

    use_tracking(run.tracking_uri, run.experiment_name)
    with mlflow.start_run(run_name=run.run_name, tags=dict(run.tags)) as active:
        mlflow.log_params({**asdict(settings), "base_model": run.base_model, "train_rows": len(train_rows),
                           "test_rows": len(test_rows)})
        logger = MetricsLogger(active.info.run_id, on_progress)
        trainer, tokenizer = build_trainer(run.base_model, train_rows, test_rows, settings, run.work_dir,
                                           callbacks=[logger])
        metrics = train_and_evaluate(trainer)
        logger.flush()
        mlflow.log_metrics({k: v for k, v in metrics.items() if _loggable(v)})
        save_mlflow_model(trainer.model, tokenizer, run.model_dir)
        mlflow.set_tag("chatft.model_dir", run.model_dir)
    return metrics


def use_tracking(uri: str, experiment_name: str) -> None:
    """Point MLflow at the store and experiment. The first use of a SQLite store creates its tables; jobs starting
    together take turns (a lock file beside the store) so they never migrate it at once."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    database = _sqlite_path(uri)
    if database is None:
        mlflow.set_experiment(experiment_name)
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(database.with_name(database.name + ".lock")):
        mlflow.set_experiment(experiment_name)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def device_and_dtype(precision: str = "32"):
    """(device, weight dtype, fp16 mixed precision): CUDA with bf16 weights where the GPU has bf16; an older GPU
    keeps float32 weights, with fp16 mixed precision when `precision` is "16"; else the CPU with float32."""
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "cuda", torch.bfloat16, False
        return "cuda", torch.float32, precision == "16"
    return "cpu", torch.float32, False


def build_trainer(base_model: str, train_rows: list[dict], test_rows: list[dict], settings: TrainingParams,
                  work_dir: str, callbacks: list | None = None):
    """An `SFTTrainer` over the conversations (assistant-only loss), and the tokenizer the model is saved with."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, IntervalStrategy
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template

    from .base_model import CHAT_TEMPLATE

    if len(train_rows) < MIN_TRAIN_ROWS:
        raise TrainingError(f"{len(train_rows)} usable training conversations; fine-tuning needs at least "
                            f"{MIN_TRAIN_ROWS}")
    device, dtype, fp16 = device_and_dtype(settings.precision)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if not tokenizer.chat_template:
        log.warning("the base model's tokenizer has no chat template; using Phi-3's chat format")
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    max_length = settings.max_seq_length if settings.max_seq_length > 0 else _model_max_length(model, tokenizer)

    # TRL masks through `{% generation %}` markers, adding them to templates it knows; for any other template the
    # masks are computed here, and TRL builds the labels from them.
    try:
        get_training_chat_template(tokenizer)
        markers = True
    except ValueError:
        markers = False
    if markers:
        train_data, test_data = Dataset.from_list(train_rows), Dataset.from_list(test_rows)
    else:
        log.info("the chat template has no generation markers; masking non-assistant tokens by prefix rendering")
        train_data = Dataset.from_list([assistant_token_masks(tokenizer, r["messages"]) for r in train_rows])
        test_data = Dataset.from_list([assistant_token_masks(tokenizer, r["messages"]) for r in test_rows])

    evaluate = len(test_rows) > 0
    strategy = {"epoch": "epoch", "steps": "steps"}.get(settings.evaluation_strategy, "no") if evaluate else "no"
    args = SFTConfig(
        output_dir=work_dir, report_to="none", save_strategy="no", disable_tqdm=True,
        num_train_epochs=settings.num_train_epochs, max_steps=settings.max_steps,
        learning_rate=settings.learning_rate, lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay, adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2, adam_epsilon=settings.adam_epsilon, max_grad_norm=settings.max_grad_norm,
        optim=settings.optim, per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=settings.per_device_eval_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, seed=settings.seed, data_seed=settings.seed,
        max_length=max_length, assistant_only_loss=markers, logging_steps=settings.logging_steps,
        eval_strategy=strategy, eval_steps=settings.eval_steps,
        use_cpu=device == "cpu", bf16=dtype == torch.bfloat16, fp16=fp16,
        activation_checkpointing=model.num_parameters() > CHECKPOINTING_PARAMETERS,
        dataloader_pin_memory=device == "cuda", include_num_input_tokens_seen="non_padding",
    )
    peft_config = None
    if settings.apply_lora:
        peft_config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_data,
                         eval_dataset=test_data if evaluate else None, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=callbacks)
    # TRL drops rows that truncation left without an assistant token; too few left is refused as above.
    if len(trainer.train_dataset) < MIN_TRAIN_ROWS:
        raise TrainingError(f"only {len(trainer.train_dataset)} of {len(train_rows)} training conversations keep "
                            f"an assistant token after truncation to max_seq_length {max_length}; fine-tuning "
                            f"needs at least {MIN_TRAIN_ROWS}")
    if evaluate and len(trainer.eval_dataset) == 0:
        trainer.eval_dataset = None
        trainer.args.eval_strategy = IntervalStrategy.NO
    return trainer, tokenizer


def _model_max_length(model, tokenizer) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    if 0 < (tokenizer.model_max_length or 0) < limit:
        limit = tokenizer.model_max_length
    return int(limit)


def train_and_evaluate(trainer) -> dict[str, Any]:
    """Evaluate the base model, train, evaluate the result. Losses are mean per assistant token."""
    evaluate = trainer.eval_dataset is not None and len(trainer.eval_dataset) > 0
    metrics: dict[str, Any] = {}
    if evaluate:
        base = trainer.evaluate(metric_key_prefix="base_eval")["base_eval_loss"]
        metrics.update(base_eval_loss=base, base_perplexity=_perplexity(base))
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    step_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics.update(train_loss=result.training_loss, first_step_loss=step_losses[0] if step_losses else None,
                   last_step_loss=step_losses[-1] if step_losses else None, steps=trainer.state.global_step,
                   train_tokens=tokens, train_seconds=round(seconds, 3),
                   tokens_per_second=round(tokens / seconds, 1) if seconds > 0 else None,
                   train_rows=len(trainer.train_dataset))
    if evaluate:
        # The evaluation strategy may have just evaluated the final weights; else evaluate them now.
        final = [entry["eval_loss"] for entry in trainer.state.log_history
                 if "eval_loss" in entry and entry.get("step") == trainer.state.global_step]
        loss = final[-1] if final else trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss=loss, perplexity=_perplexity(loss))
    return metrics


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def save_mlflow_model(model, tokenizer, model_dir: str) -> None:
    """The merged model as an MLflow transformers model (llm/v1/chat), the local `mlflow_model_folder`. Written
    beside its place and renamed into it, so `model_dir` only ever holds a whole model."""
    import mlflow.transformers
    from huggingface_hub import ModelCard

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    target = Path(model_dir)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Explicit requirements: left to infer them, MLflow imports torchvision, which this torch build breaks.
    requirements = [f"{name}=={metadata.version(name)}" for name in
                    ("mlflow", "torch", "transformers", "accelerate", "tokenizers", "safetensors")]
    # A card of our own: otherwise MLflow asks the hub for one, by the base model's path.
    card = ModelCard("---\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n"
                     "# Fine-tuned chat model\n\nFine-tuned by the chatft local workspace (LoRA weights merged).")
    mlflow.transformers.save_model(transformers_model={"model": model, "tokenizer": tokenizer}, path=str(partial),
                                   task="llm/v1/chat", pip_requirements=requirements, model_card=card)
    os.rename(partial, target)


# ------------------------------------------------------------------------------------------ metrics


def _loggable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MetricsLogger(TrainerCallback):
    """Sends the trainer's logs to MLflow (per step, written in batches) and reports progress."""

    def __init__(self, run_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None):
        from mlflow import MlflowClient

        self.client = MlflowClient()
        self.run_id = run_id
        self.on_progress = on_progress
        self.pending: list = []
        self.flushed_at = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now_ms, state.global_step) for key, value in (logs or {}).items()
                         if _loggable(value)]
        if time.monotonic() - self.flushed_at >= METRICS_FLUSH_SECONDS:
            self.flush()
        if self.on_progress is not None and "loss" in (logs or {}):
            self.on_progress({"step": state.global_step, "total_steps": state.max_steps, "loss": logs["loss"],
                              "epoch": round(state.epoch or 0.0, 3)})

    def flush(self) -> None:
        while self.pending:  # log_batch takes at most 1000 metrics
            batch, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)
        self.flushed_at = time.monotonic()
