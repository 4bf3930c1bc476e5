"""Start-up time of the commands that must be fast, against `import whisper`, in the same run.

    .venv/bin/python bench/startup.py [--runs 15]

Each command runs in a fresh process; the table gives the median and the best wall time. Results go to
bench/results/startup.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def timed(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="whisperctl-bench-")
    env = {**os.environ, "WHISPERCTL_CACHE_DIR": cache, "NO_COLOR": "1"}
    whisperctl = str(BIN / "whisperctl")
    py = sys.executable
    cases = {
        "python -c pass (interpreter alone)": [py, "-c", "pass"],
        "whisperctl --help": [whisperctl, "--help"],
        "whisperctl list": [whisperctl, "list"],
        "whisperctl list --json": [whisperctl, "list", "--json"],
        "whisperctl path tiny": [whisperctl, "path", "tiny"],
        'python -c "import whisper"': [py, "-c", "import whisper"],
        'python -c "import torch"': [py, "-c", "import torch"],
    }
    for cmd in cases.values():  # warm the page cache and the bytecode caches
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    results = {name: timed(cmd, args.runs, env) for name, cmd in cases.items()}
    reference = statistics.median(results['python -c "import whisper"'])
    lines = [
        f"Start-up, {args.runs} runs each, fresh process per run ({platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}).",
        "",
        "| command | median (ms) | best (ms) | vs `import whisper` |",
        "|---|---:|---:|---:|",
    ]
    for name, times in results.items():
        median = statistics.median(times)
        lines.append(
            f"| `{name}` | {median * 1000:.0f} | {min(times) * 1000:.0f} | {reference / median:.1f}x faster |"
            if "whisperctl" in name
            else f"| `{name}` | {median * 1000:.0f} | {min(times) * 1000:.0f} | |"
        )
    text = "\n".join(lines)
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "startup.md").write_text(text + "\n")
    (out / "startup.json").write_text(json.dumps({k: v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
