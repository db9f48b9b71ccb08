"""Cold start: import time and memory of `function_app` beside a bare `import azure.functions`.

Each import runs in fresh interpreters (several rounds, median). Last line: a JSON object of the figures.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import resource, sys, time
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
heavy = [m for m in ("azure.ai.ml", "mlflow", "torch", "transformers", "pandas", "datasets", "pydantic") if m in sys.modules]
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(sys.modules), ",".join(heavy))
"""


def measure(module: str, rounds: int) -> dict:
    times, rss, modules, heavy = [], [], 0, ""
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
        times.append(float(out[0]))
        rss.append(int(out[1]) / 1024)
        modules = int(out[2])
        heavy = out[3] if len(out) > 3 else ""
    return {"import_ms": round(statistics.median(times) * 1000, 1), "peak_rss_mb": round(statistics.median(rss), 1),
            "modules": modules, "heavy_modules": heavy}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    baseline = measure("azure.functions", rounds)
    app = measure("function_app", rounds)
    for name, fig in (("import azure.functions", baseline), ("import function_app", app)):
        print(f"{name:24s} {fig['import_ms']:8.1f} ms  {fig['peak_rss_mb']:7.1f} MB  {fig['modules']:5d} modules")
    print(json.dumps({"rounds": rounds, "azure_functions": baseline, "function_app": app,
                      "time_ratio": round(app["import_ms"] / baseline["import_ms"], 2),
                      "added_ms": round(app["import_ms"] - baseline["import_ms"], 1),
                      "rss_ratio": round(app["peak_rss_mb"] / baseline["peak_rss_mb"], 2)}))


if __name__ == "__main__":
    main()
