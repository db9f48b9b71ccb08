"""`chatft runs [RUN_ID] [--json]`: a table of runs, or one run in detail."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", nargs="?", help="show this run in detail")
    parser.add_argument("--state", action="append", default=[], help="only runs in this state (repeatable)")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--samples", action="store_true",
                        help="with RUN_ID: the evaluation's sample answers, base and fine-tuned side by side")


def describe(run) -> list[str]:
    """The lines of one run's detail view."""
    lines = [f"run {run.run_id}: {run.state}"]
    up = run.upload
    if up:
        lines.append(f"  upload     {up.get('container')}/{up.get('blob')} ({up.get('size', '?')} bytes, etag {up.get('etag')})")
    lines.append("  states")
    for t in run.history:
        marker = f"({t.kind})" if t.kind else t.state.value  # a retry is noted under the state it happened in
        by = f"[{t.step}] " if t.step else ""  # the step that wrote the line (shared/steps.py)
        lines.append(f"    {t.at}  {marker:<10} {by}{t.detail}")
    rep = run.report
    if rep:
        lines.append(f"  validation {'ok' if rep.get('ok') else 'REJECTED'}: {rep.get('valid_records', 0)} valid of "
                     f"{rep.get('records', 0)} records; split {rep.get('split', {})}; report {rep.get('report_path', '')}")
        for e in rep.get("errors", []):
            lines.append(f"    line {e.get('line')}: {e.get('code')}: {e.get('message')}")
    if run.overrides:
        lines.append(f"  overrides  {run.overrides}")
    if run.job_name:
        lines.append(f"  job        {run.job_name} {run.job_status}")
    if run.metrics:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.metrics.items()}
        lines.append(f"  metrics    {shown}")
    lines += describe_evaluation(run)
    if run.model_name:
        lines.append(f"  model      {run.model_name} version {run.model_version}")
    if run.endpoint_name:
        lines.append(f"  endpoint   {run.endpoint_name} / {run.deployment_name} {run.scoring_uri}")
    if run.last_used_at:
        lines.append(f"  last used  {run.last_used_at}")
    if run.reconciled_at:
        lines.append(f"  reconciled {run.reconciled_at} (checked with the backend: its events or messages were late)")
    if run.failure:
        lines.append(f"  failure    at {run.failure.stage}: {run.failure.reason}")
    return lines


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def describe_evaluation(run) -> list[str]:
    """The quality gate's lines: the decision, then base against tuned per metric with its 95% interval."""
    e = run.evaluation
    if not e:
        return []
    action = "deploy" if e.get("deploy") else "hold"
    lines = [f"  evaluation {e.get('verdict')} -> {action} (EVAL_GATE={e.get('gate')}, metric {e.get('metric')}, "
             f"{e.get('records')} test records): {e.get('reason')}"]
    if run.deployed_by_choice:
        lines.append(f"             deployed anyway by a person's choice at {run.deployed_by_choice}")
    lines.append(f"    {'metric':<11} {'base':>10} {'tuned':>10} {'improvement':>12}  95% interval       verdict")
    for name, m in (e.get("metrics") or {}).items():
        interval = f"[{_num(m.get('low'))}, {_num(m.get('high'))}]" if m.get("low") is not None else "-"
        better = "higher" if m.get("higher_is_better") else "lower"
        lines.append(f"    {name:<11} {_num(m.get('base')):>10} {_num(m.get('tuned')):>10} "
                     f"{_num(m.get('improvement')):>12}  {interval:<18} {m.get('verdict')} ({better} is better)")
    lines += _describe_champion(e.get("champion"))
    if e.get("report_path"):
        lines.append(f"    report {e['report_path']} (samples: chatft runs {run.run_id} --samples)")
    return lines


def _describe_champion(c) -> list[str]:
    """A new version of a model line against the line's version in service, per metric with its interval."""
    if not c:
        return []
    who = f"v{c.get('model_version')} (run {c.get('run_id')})" if c.get("model_version") else f"run {c.get('run_id')}"
    lines = [f"  vs in service {who} {c.get('verdict')} -> {'deploy' if c.get('deploy') else 'hold'}: "
             f"{c.get('reason')}",
             f"    {'metric':<11} {'in service':>10} {'tuned':>10} {'improvement':>12}  95% interval       verdict"]
    for name, m in (c.get("metrics") or {}).items():
        interval = f"[{_num(m.get('low'))}, {_num(m.get('high'))}]" if m.get("low") is not None else "-"
        better = "higher" if m.get("higher_is_better") else "lower"
        lines.append(f"    {name:<11} {_num(m.get('champion')):>10} {_num(m.get('tuned')):>10} "
                     f"{_num(m.get('improvement')):>12}  {interval:<18} {m.get('verdict')} ({better} is better)")
    return lines


def describe_samples(report: dict) -> list[str]:
    """The evaluation's first samples: prompt, reference, base and fine-tuned answers, one block each."""
    lines = []
    for i, sample in enumerate(report.get("samples") or [], 1):
        lines.append(f"sample {i}")
        for key in ("prompt", "reference", "base", "tuned", "champion"):
            if key == "champion" and sample.get(key) is None:
                continue  # scored only for a new version of a model line
            text = " ".join(str(sample.get(key, "")).split())
            lines.append(f"  {key:<9} {text[:300]}")
    return lines or ["the evaluation kept no samples (EVAL_SAMPLES=0?)"]


def main(args: argparse.Namespace) -> int:
    from shared.config import Settings
    from shared.run_store import RunNotFound, RunStore
    from shared.runs import State

    settings = Settings.from_env()
    store = RunStore(settings, settings.runs_table)
    try:
        if args.run_id:
            run = store.get(args.run_id)
            if args.samples:
                return _print_samples(settings, run, args.json)
            print(json.dumps(run.to_dict(), indent=2) if args.json else "\n".join(describe(run)))
            return 0
        states = [State(s.capitalize()) for s in args.state]
        runs = store.list(states=states or None, limit=args.limit)
    except RunNotFound:
        print(f"chatft runs: no run {args.run_id}")
        return 1
    except ValueError as exc:
        print(f"chatft runs: {exc}")
        return 2
    except Exception as exc:
        print(f"chatft runs: run table unreachable ({type(exc).__name__}); is the local host running?")
        return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return 0
    print(f"{'RUN':<34} {'STATE':<10} {'UPDATED':<25} {'RECONCILED':<25} {'RECORDS':>7}  {'GATE':<12}  "
          f"MODEL / ENDPOINT")
    for r in runs:
        target = r.endpoint_name or r.model_name or (r.failure.reason[:40] if r.failure else "")
        print(f"{r.run_id:<34} {r.state.value:<10} {r.updated_at:<25} {r.reconciled_at or '-':<25} "
              f"{r.report.get('valid_records', ''):>7}  {gate_column(r):<12}  {target}")
    return 0


def gate_column(run) -> str:
    """The quality gate in one word or two: its verdict (against the base model, then against a line's version in
    service: `better/worse`), and `chosen` when a person deployed a Held run."""
    if not run.evaluation:
        return "-"
    champion = run.evaluation.get("champion") or {}
    return (run.evaluation.get("verdict", "?") + (f"/{champion.get('verdict')}" if champion else "")
            + (" chosen" if run.deployed_by_choice else ""))


def _print_samples(settings, run, as_json: bool = False) -> int:
    from shared.storage import Blobs

    path = (run.evaluation or {}).get("report_path")
    if not path:
        print(f"chatft runs: run {run.run_id} has no evaluation report ({run.state})")
        return 1
    try:
        report = Blobs(settings).read_json(settings.runs_container, path)
    except Exception as exc:
        print(f"chatft runs: evaluation report {path} unreadable ({type(exc).__name__})")
        return 1
    print(json.dumps(report.get("samples", []), indent=2) if as_json else "\n".join(describe_samples(report)))
    return 0
