"""Benchmark: training throughput of the local trainer against a plain TRL `SFTTrainer` run, same model and data.

The local trainer is what a job runs: `chatft_local.workspace.trainer.build_trainer` (assistant-only loss, LoRA,
per-step logging) with its MLflow metrics logger on a SQLite store and a progress writer. The plain run is
`SFTTrainer` with the same hyperparameters and nothing else (no callbacks, default logging). Throughput is the
training tokens (padding excluded, identical for both) over the wall time of `trainer.train()`. Runs alternate,
`--repeat` times each; the fastest of each is compared (other load on the machine only ever slows a run down),
and medians are reported beside.

    .venv/bin/python bench/train_throughput.py [--rows 300] [--epochs 1] [--repeat 3]
    .venv/bin/python bench/train_throughput.py --phi3-mini      # GPU: Phi-3-mini-sized, random weights, bf16

Target: the local trainer within 10% of plain TRL (ratio >= 0.9). The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatft_local.sample_data import SAMPLE_FILE  # noqa: E402
from chatft_local.workspace import trainer as local  # noqa: E402
from chatft_local.workspace.base_model import build_tokenizer, ensure_base_model  # noqa: E402

# Phi-3-mini-4k-instruct's shape (3.8B parameters).
PHI3_MINI = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)


def build_phi3_mini(target: Path) -> str:
    """A Phi-3-mini-sized model with random bf16 weights (built on the GPU) and the stand-in's tokenizer."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    tokenizer = build_tokenizer()
    config = Phi3Config(**PHI3_MINI, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = Phi3ForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    torch.cuda.empty_cache()
    return str(target)


def run_local(model_dir: str, rows: list[dict], settings, work: Path) -> tuple[float, int]:
    """The local trainer as a job runs it; returns (seconds in train(), tokens trained)."""
    import mlflow

    progress_file = work / "status.json"
    last = [0.0]

    def progress(update):
        if time.monotonic() - last[0] >= 1.0 or update["step"] == update["total_steps"]:
            scratch = progress_file.with_suffix(".tmp")
            scratch.write_text(json.dumps({"status": "Running", "progress": update}))
            scratch.replace(progress_file)
            last[0] = time.monotonic()

    work.mkdir(parents=True, exist_ok=True)
    local.use_tracking(f"sqlite:///{work / 'mlflow.db'}", "bench")
    with mlflow.start_run(run_name=f"bench-{time.time_ns()}") as active:
        logger = local.MetricsLogger(active.info.run_id, progress)
        trainer, _ = local.build_trainer(model_dir, rows, [], settings, str(work / "local"), callbacks=[logger])
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        logger.flush()
    tokens = _tokens(trainer, settings)
    _release(trainer)
    return seconds, tokens


def run_plain(model_dir: str, rows: list[dict], settings, work: Path) -> tuple[float, int]:
    """Plain TRL: the same hyperparameters, no callbacks, no tracking, default logging."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    device, dtype, _ = local.device_and_dtype()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    args = SFTConfig(output_dir=str(work / "plain"), report_to="none", save_strategy="no", disable_tqdm=True,
                     num_train_epochs=settings.num_train_epochs, learning_rate=settings.learning_rate,
                     per_device_train_batch_size=settings.per_device_train_batch_size,
                     max_length=settings.max_seq_length, seed=settings.seed, use_cpu=device == "cpu",
                     bf16=dtype == torch.bfloat16,
                     activation_checkpointing=model.num_parameters() > local.CHECKPOINTING_PARAMETERS)
    peft = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=peft)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = _tokens(trainer, settings)
    _release(trainer)
    return seconds, tokens


def _tokens(trainer, settings) -> int:
    return sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * settings.num_train_epochs


def _release(trainer) -> None:
    import torch

    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300, help="training conversations (from the bundled sample)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--phi3-mini", action="store_true", help="Phi-3-mini-sized random model (needs a GPU)")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if args.phi3_mini and not torch.cuda.is_available():
        print("--phi3-mini needs a CUDA GPU", file=sys.stderr)
        return 2

    records = [json.loads(line) for line in SAMPLE_FILE.read_text().splitlines() if line.strip()]
    rows = [{"messages": r["messages"]} for r in (records * (args.rows // len(records) + 1))[:args.rows]]
    settings = local.TrainingParams.from_params({
        "num_train_epochs": args.epochs, "learning_rate": 1e-3, "per_device_train_batch_size": args.batch,
        "max_seq_length": args.max_seq_length, "apply_lora": "true", "lora_r": 16, "lora_alpha": 32,
        "evaluation_strategy": "disable"})

    work = Path(tempfile.mkdtemp(prefix="chatft-bench-train-"))
    try:
        model_dir = build_phi3_mini(work / "phi3-mini") if args.phi3_mini else ensure_base_model(work).path
        figures: dict[str, list[float]] = {"local": [], "plain": []}
        tokens: dict[str, int] = {}
        for i in range(args.repeat):
            for name, run in (("local", run_local), ("plain", run_plain))[:: 1 if i % 2 == 0 else -1]:
                seconds, tokens[name] = run(model_dir, rows, settings, work / f"{name}-{i}")
                figures[name].append(tokens[name] / seconds)
                print(f"round {i + 1} {name}: {tokens[name]} tokens in {seconds:.2f} s = "
                      f"{tokens[name] / seconds:,.0f} tokens/s", flush=True)
        assert tokens["local"] == tokens["plain"], tokens  # same data, same truncation
        local_tps, plain_tps = max(figures["local"]), max(figures["plain"])
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        print(json.dumps({"model": "phi3-mini-random-bf16" if args.phi3_mini else "phi3-tiny", "device": device,
                          "rows": args.rows, "epochs": args.epochs, "batch": args.batch,
                          "max_seq_length": args.max_seq_length, "tokens": tokens["local"], "repeat": args.repeat,
                          "local_tokens_per_second": round(local_tps, 1),
                          "plain_trl_tokens_per_second": round(plain_tps, 1),
                          "local_median": round(statistics.median(figures["local"]), 1),
                          "plain_trl_median": round(statistics.median(figures["plain"]), 1),
                          "ratio": round(local_tps / plain_tps, 3)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
