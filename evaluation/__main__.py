"""`python -m evaluation`: the Azure ML command job's entry point (and a local command).

    python -m evaluation --base-model DIR --tuned-model DIR --test-file FILE --output DIR_OR_FILE
                         [--run-id ID] [--max-records N] [--samples N] [--max-new-tokens N] [--max-length N]
                         [--champion-model DIR --champion-run-id ID --champion-model-id ID]

`--champion-model`: a model line's version in service, scored beside the base and tuned models on the same records
(its run and registered model ids are copied into the report so the gate can say what it was compared with).

`--output` is a folder (the job's `uri_folder` output, mounted: `evaluation.json` is written in it) or a path
ending in `.json`. Exit status 0 when the report is written, 1 when the evaluation cannot run (the reason on
stderr and in the job's log).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPORT_NAME = "evaluation.json"


def write_report(report: dict, output: str | os.PathLike) -> Path:
    """Write the report whole (beside its place, then renamed) to `output` (a folder or a .json path)."""
    target = Path(output)
    if target.suffix != ".json":
        target = target / REPORT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps(_clean(report), indent=1, allow_nan=False))
    os.replace(partial, target)
    return target


def _clean(value):
    """JSON has no NaN or infinity: a report says null for "not a number" (a diverged loss)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    from .scoring import EvaluationError, EvaluationLimits, evaluate

    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--tuned-model", required=True)
    parser.add_argument("--test-file", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--run-id", default="")
    parser.add_argument("--max-records", type=int, default=500)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=0)
    parser.add_argument("--champion-model", default="")
    parser.add_argument("--champion-run-id", default="")
    parser.add_argument("--champion-model-id", default="")
    args = parser.parse_args(argv)
    limits = EvaluationLimits(max_records=args.max_records, samples=args.samples,
                              max_new_tokens=args.max_new_tokens, max_length=args.max_length)
    try:
        champion = {"run_id": args.champion_run_id, "model_id": args.champion_model_id} if args.champion_model else None
        report = evaluate(args.base_model, args.tuned_model, _test_file(args.test_file), limits, run_id=args.run_id,
                          champion_model=args.champion_model or None, champion=champion)
    except EvaluationError as exc:
        print(f"evaluation failed: {exc}", file=sys.stderr)
        return 1
    report = _clean(report)
    path = write_report(report, args.output)
    print(f"evaluation written to {path}: {json.dumps(report['metrics'])}")
    return 0


def _test_file(path: str) -> str:
    """A `uri_file` input is mounted as the file; a folder (a `uri_folder` input) holds `test.jsonl`."""
    p = Path(path)
    return str(p / "test.jsonl") if p.is_dir() else str(p)


if __name__ == "__main__":
    sys.exit(main())
