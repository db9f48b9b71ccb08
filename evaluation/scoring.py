"""Score a fine-tuned chat model and its base model on the run's test split.

For each of the first `max_records` test records, both models' mean loss on the record's assistant tokens
(teacher-forced, through each model's own chat template; perplexity = exp(loss)); for the first `samples`
records, both models' greedy answer to the conversation before its last assistant turn, scored against that turn
with ROUGE-L F1 (`rouge-score`) and chrF (`sacrebleu`, 0-100). A new version of a model line is also scored beside
the line's version in service (the champion), on the same records. The report (`build_report`) has the per-record
values the app's gate bootstraps over (`shared.quality_gate`) and the means; its shape is
`shared.protocol.EvaluationReport` (this module writes plain JSON: the Azure ML job needs no pydantic).

Runs on CUDA with bf16 where there is one, else on the CPU in float32. Nothing is fetched from a hub.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .chat import assistant_token_masks, load_conversations, prompt_and_reference  # noqa: E402

REPORT_VERSION = 1
# Metrics per record, and which way is better (True: higher). `perplexity` is exp(eval_loss) per record.
METRICS = {"eval_loss": False, "perplexity": False, "rougeL": True, "chrf": True}
SHOWN_SAMPLES = 3


class EvaluationError(RuntimeError):
    """The evaluation cannot run; the message says why in one line."""


@dataclass(frozen=True)
class EvaluationLimits:
    max_records: int = 500  # EVAL_MAX_RECORDS
    samples: int = 50  # EVAL_SAMPLES
    max_new_tokens: int = 128  # EVAL_MAX_NEW_TOKENS
    max_length: int = 0  # tokens per record; 0: the model's maximum
    shown: int = SHOWN_SAMPLES


def model_directory(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights directory, tokenizer directory) of a Hugging Face directory or an MLflow transformers model folder
    (`model/` and `components/tokenizer/`, as mlflow.transformers saves; registry models keep the weights under
    `data/model` in older layouts). EvaluationError when no `config.json` is found."""
    root = Path(path)
    candidates = [root, root / "model", root / "data" / "model"]
    candidates += sorted(p.parent for p in root.glob("*/*/config.json"))
    weights = next((c for c in candidates if (c / "config.json").is_file()), None)
    if weights is None:
        raise EvaluationError(f"no Hugging Face model (config.json) found in {root}")
    tokenizers = [root / "components" / "tokenizer", root / "data" / "tokenizer", weights]
    tokenizer = next((t for t in tokenizers if (t / "tokenizer_config.json").is_file()), weights)
    return weights, tokenizer


def _load(path: str, device: str, dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights, tokenizer_dir = model_directory(path)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if not tokenizer.chat_template:
        raise EvaluationError(f"the tokenizer in {tokenizer_dir} has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=dtype).to(device)
    model.eval()
    return model, tokenizer


def _device():
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return "cpu", torch.float32


def _max_length(model, tokenizer, limit: int) -> int:
    if limit > 0:
        return limit
    longest = getattr(model.config, "max_position_embeddings", None) or 2048
    if 0 < (tokenizer.model_max_length or 0) < longest:
        longest = tokenizer.model_max_length
    return int(longest)


def record_losses(model, tokenizer, conversations: list[dict], max_length: int) -> list[tuple[float, int]]:
    """(mean negative log-likelihood per assistant token, assistant tokens) of each conversation, cut to
    `max_length` tokens; a conversation left with no assistant token scores (nan, 0)."""
    import torch

    out = []
    device = next(model.parameters()).device
    for row in conversations:
        encoded = assistant_token_masks(tokenizer, row["messages"])
        ids = encoded["input_ids"][:max_length]
        mask = encoded["assistant_masks"][:max_length]
        # A label at position i is predicted from the tokens before it: the first token is never a target.
        targets = sum(mask[1:])
        if targets == 0:
            out.append((math.nan, 0))
            continue
        input_ids = torch.tensor([ids], device=device)
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits[0, :-1].float()
        labels = input_ids[0, 1:]
        nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        weights = torch.tensor(mask[1:], device=device, dtype=nll.dtype)
        out.append((float((nll * weights).sum() / weights.sum()), int(targets)))
    return out


def greedy_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, max_length: int) -> list[str]:
    """The model's greedy answer to each conversation (its chat template's generation prompt appended)."""
    import torch

    device = next(model.parameters()).device
    answers = []
    for turns in prompts:
        ids = tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
        ids = list(ids)[-max(1, max_length - max_new_tokens):]  # keep the end: it holds the question
        input_ids = torch.tensor([ids], device=device)
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(generated[0, input_ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def text_scores(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """ROUGE-L F1 (rouge-score, stemmed, 0-1) and chrF (sacrebleu, 0-100) of each prediction against its
    reference: the libraries' own metrics, nothing written here."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    chrf = [sacrebleu.sentence_chrf(pred, [ref]).score for pred, ref in zip(predictions, references)]
    return {"rougeL": rouge, "chrf": chrf}


def _mean(values: list[float]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def _perplexity(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf


def evaluate(base_model: str, tuned_model: str, test_file: str, limits: EvaluationLimits = EvaluationLimits(),
             run_id: str = "", champion_model: str | None = None,
             champion: dict[str, str] | None = None) -> dict[str, Any]:
    """Score both models (and, for a new version of a model line, `champion_model`: the line's version in service,
    described by `champion`, e.g. its run and registered model ids) on the test file, record by record on the same
    records, and return the report (`shared.protocol.EvaluationReport` shape). EvaluationError when there is nothing
    to score or a model cannot be read."""
    started = time.perf_counter()
    conversations = load_conversations(test_file)[: max(0, limits.max_records)]
    if not conversations:
        raise EvaluationError(f"no usable test conversation in {test_file}")
    pairs = [prompt_and_reference(row["messages"]) for row in conversations]
    sampled = [(i, p) for i, p in enumerate(pairs) if p is not None][: max(0, limits.samples)]
    device, dtype = _device()
    results: dict[str, dict[str, Any]] = {}
    tokens = 0
    models = [("base", base_model), ("tuned", tuned_model)] + ([("champion", champion_model)] if champion_model else [])
    scored = [which for which, _ in models]
    for which, path in models:
        model, tokenizer = _load(path, device, dtype)
        length = _max_length(model, tokenizer, limits.max_length)
        losses = record_losses(model, tokenizer, conversations, length)
        answers = greedy_answers(model, tokenizer, [p[0] for _, p in sampled], limits.max_new_tokens, length)
        tokens += sum(n for _, n in losses) + sum(len(tokenizer(a)["input_ids"]) for a in answers)
        results[which] = {"losses": losses, "answers": answers}
        del model
    # Records where any model had no assistant token left are left out of the paired comparisons.
    kept = [i for i in range(len(conversations)) if all(results[which]["losses"][i][1] for which in scored)]
    per_record: dict[str, dict[str, list[float]]] = {}
    for which in scored:
        losses = [results[which]["losses"][i][0] for i in kept]
        per_record.setdefault("eval_loss", {})[which] = losses
        per_record.setdefault("perplexity", {})[which] = [_perplexity(v) for v in losses]
    references = [p[1] for _, p in sampled]
    for which in scored:
        for name, values in text_scores(results[which]["answers"], references).items():
            per_record.setdefault(name, {})[which] = values
    metrics = {}
    for name, higher in METRICS.items():
        base, tuned = per_record[name]["base"], per_record[name]["tuned"]
        metrics[name] = {"base": _mean(base), "tuned": _mean(tuned), "records": len(base),
                         "higher_is_better": higher}
        if champion_model:
            metrics[name]["champion"] = _mean(per_record[name]["champion"])
    # Token-weighted loss, as the trainer reports eval_loss (the per-record mean above weighs records equally).
    for which in scored:
        total = sum(results[which]["losses"][i][1] for i in kept)
        weighted = sum(results[which]["losses"][i][0] * results[which]["losses"][i][1] for i in kept)
        metrics["eval_loss"][f"{which}_token_weighted"] = weighted / total if total else None
    samples = [{"prompt": turns[-1]["content"] if turns else "", "reference": ref,
                **{which: results[which]["answers"][k] for which in scored}}
               for k, (_, (turns, ref)) in enumerate(sampled[: limits.shown])]
    return {
        "version": REPORT_VERSION,
        "run_id": run_id,
        "base_model": str(base_model),
        "tuned_model": str(tuned_model),
        # The line's version in service, scored beside them (None for a line's first version or a root upload).
        "champion": ({**(champion or {}), "model": str(champion_model)} if champion_model else None),
        "records": len(kept),
        "sampled": len(sampled),
        "tokens": tokens,
        "device": device,
        "seconds": round(time.perf_counter() - started, 3),
        "limits": {"max_records": limits.max_records, "samples": limits.samples,
                   "max_new_tokens": limits.max_new_tokens, "max_length": limits.max_length},
        "metrics": metrics,
        "per_record": per_record,
        "samples": samples,
    }
