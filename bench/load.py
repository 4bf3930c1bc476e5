"""Load benchmark: whisperctl against openai-whisper's ``load_model``, on checkpoints of the official dims.

    .venv/bin/python bench/load.py [--models tiny,small,medium,large-v3,turbo] [--runs 3] [--device all]

Checkpoints with the official dims are generated once in the work dir (``.bench/load/`` by default) in the
official format (``{"dims": ..., "model_state_dict": {key: fp16 tensor}}``, ``torch.save``), with random
values, tensor by tensor from :func:`whisperctl.models.dims.state_dict_shapes` (in a child process). The
file name carries a hash of the dims; a file is reused when whisperctl's checkpoint reader finds those dims
and the tensors they need, all fp16, and generated again otherwise. Every load runs in a fresh process:

- ``whisper.load_model(path, device=D)`` (it returns float32);
- ``whisperctl.load_model(path, device=D)`` (float32, as openai-whisper), with ``dtype="fp16"``, and with
  ``into="whisper"`` (an openai-whisper ``Whisper`` built the fast way);
- the command users run, ``whisperctl load PATH --device D [--dtype fp16] --json`` (on CUDA, fp16 only);
- on CUDA also: whisperctl fp16 with each tensor moved by ``tensor.to(device)`` (*direct copies*, the path
  before the pinned staging buffers), and the floor, ``torch.load(path, map_location=D, weights_only=True)``
  (the file's tensors alone, no model built).

*in-process* is the load call alone (for the command: the report's ``seconds.total``; on CUDA the context is
created before the clock starts, for every tool), *whole-process* the wall time from spawn to exit, imports
included; peak RSS comes from ``wait4``, peak GPU memory from ``torch.cuda.max_memory_allocated``. The page
cache is warm (the file is read just before each run: a kernel may reclaim page cache left unused for a
while); on CUDA, *cold* rows evict the file first
(``posix_fadvise(DONTNEED)``) and are compared with reading the file cold and with the floor's cold
load. Each whisperctl load is checked:
its parameters must be on the device, in the dtype and in the number expected. The cases run interleaved,
``--runs`` times each (median times, highest memory); before each run the benchmark waits a little for the
CPUs to be idle and it records the CPU other processes used meanwhile. Results go to bench/results/load.md
(and .json; ``--output`` renames them); the exit status is 2 when a measured target fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    busy_cpu,
    dist_version,
    fmt,
    ratio,
    read_file,
    source_fingerprint,
    wait_for_idle,
    wait_timed,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # tests/helpers.py: the tests evict a file from the page cache the same way

from tests.helpers import evict  # noqa: E402

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
GiB = 1024 * MiB

# Benchmark names -> official names (dims from whisperctl._official, openai-whisper 20250625).
MODELS = {
    "tiny": "tiny",
    "small": "small",
    "medium": "medium",
    "large-v3": "large-v3",
    "turbo": "large-v3-turbo",
}
GENERATOR = "fp16 normal(0, 0.02) (LayerNorm weights 1 + that), torch.Generator seed 0, torch.save"
TARGET_MODEL = "large-v3"
WHISPER = "whisper.load_model"


@dataclass(frozen=True)
class Case:
    key: str  # the row's label
    tool: str  # "whisper", "whisperctl" (library in `python -c`) or "cli" (`whisperctl load --json`)
    dtype: str = "fp32"
    into: str = "whisperctl"
    staged: bool = True  # whisperctl's copies to CUDA through pinned buffers (off: tensor.to(device) each)
    gpu_only: bool = False


FLOOR = "torch.load map_location (floor)"
CASES = (
    Case(WHISPER, "whisper"),
    Case("whisperctl.load_model", "whisperctl"),
    Case("whisperctl.load_model fp16", "whisperctl", dtype="fp16"),
    Case('whisperctl.load_model into="whisper"', "whisperctl", into="whisper"),
    Case("whisperctl load --json", "cli"),
    Case("whisperctl load --dtype fp16 --json", "cli", dtype="fp16"),
    # On CUDA: the same load with each tensor moved by tensor.to(device), and the file's tensors alone moved
    # by torch.load(path, map_location=device, weights_only=True): no model built, nothing converted.
    Case(
        "whisperctl.load_model fp16, direct copies", "whisperctl", dtype="fp16", staged=False, gpu_only=True
    ),
    Case(FLOOR, "torch", dtype="fp16", gpu_only=True),
)
COLD = Case("whisperctl.load_model fp16, cold", "whisperctl", dtype="fp16")
COLD_CASES = (
    COLD,
    Case("whisperctl.load_model fp16, direct copies, cold", "whisperctl", dtype="fp16", staged=False),
    Case(FLOOR + ", cold", "torch", dtype="fp16"),
)

# One load in a fresh process; the last line of stdout is its JSON. Imports are timed apart from the load.
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
a = json.loads(sys.argv[1])
import torch
if a["tool"] == "whisper":
    import whisper
    def load():
        return whisper.load_model(a["path"], device=a["device"])
elif a["tool"] == "torch":
    def load():
        return torch.load(a["path"], map_location=a["device"], weights_only=True)
else:
    import whisperctl
    import whisperctl.models.loader
    whisperctl.models.loader.STAGED_COPIES = a["staged"]
    def load():
        return whisperctl.load_model(a["path"], device=a["device"], dtype=a["dtype"], into=a["into"])
cuda = a["device"].startswith("cuda")
if cuda:
    torch.empty(1, device=a["device"])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
t1 = time.perf_counter()
model = load()
if cuda:
    torch.cuda.synchronize()
t2 = time.perf_counter()
if isinstance(model, dict):  # torch.load: the state dict alone
    params = list(model["model_state_dict"].values())
    tensors = params
else:
    params = list(model.parameters())
    tensors = params + list(model.buffers())
print(json.dumps({
    "import_s": t1 - t0,
    "load_s": t2 - t1,
    "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    "devices": sorted({str(t.device) for t in tensors}),
    "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params}),
    "parameters": sum(p.numel() for p in params),
    "weight_bytes": sum(t.numel() * t.element_size() for t in tensors),
}))
"""

# A checkpoint in the official format, tensor by tensor in fp16: the peak is the fp16 file itself.
GENERATE = r"""
import json, sys, torch
from whisperctl.models.dims import ModelDimensions, state_dict_shapes
dims = json.loads(sys.argv[1])
generator = torch.Generator().manual_seed(0)
state = {}
for key, shape in state_dict_shapes(ModelDimensions(**dims)).items():
    t = torch.empty(shape, dtype=torch.float16).normal_(0.0, 0.02, generator=generator)
    if key.endswith(("ln.weight", "ln_post.weight")):
        t += 1.0
    state[key] = t
torch.save({"dims": dims, "model_state_dict": state}, sys.argv[2])
"""

PROBE = r"""
import json, torch
cuda = torch.cuda.is_available()
print(json.dumps({
    "torch": torch.__version__,
    "cuda": cuda,
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "gpu_memory": torch.cuda.get_device_properties(0).total_memory if cuda else None,
}))
"""


class BenchError(Exception):
    """A load that failed, timed out or printed no report."""


# -- checkpoints ---------------------------------------------------------------------------------------------
def official_dims(name: str) -> dict[str, int]:
    from whisperctl.models._official import OFFICIAL
    from whisperctl.models.dims import DIMS_FIELDS

    return dict(zip(DIMS_FIELDS, OFFICIAL[MODELS[name]][3], strict=True))


def expected_parameters(name: str) -> int:
    from whisperctl.models.dims import ModelDimensions, count_parameters

    return count_parameters(ModelDimensions(**official_dims(name))).total


def _valid(path: Path, dims: dict[str, int]) -> bool:
    """Whether an existing file has these dims, the tensors they need, all fp16 (read without torch)."""
    from whisperctl.errors import WhisperctlError
    from whisperctl.models.checkpoint import check_tensors, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except (WhisperctlError, OSError):
        return False
    return (
        ckpt.dims.as_dict() == dims
        and {t.dtype for t in ckpt.tensors.values()} == {"float16"}
        and not check_tensors(ckpt)
    )


def ensure_checkpoint(work: Path, name: str, *, timeout: float) -> Path:
    """The generated checkpoint of ``name``'s dims, made now if missing or wrong (old versions removed)."""
    dims = official_dims(name)
    tag = hashlib.sha256(json.dumps(dims, sort_keys=True).encode()).hexdigest()[:8]
    path = work / f"{name}-{tag}.pt"
    if path.exists() and _valid(path, dims):
        return path
    stale = re.compile(re.escape(name) + r"-[0-9a-f]{8}\.pt(\.tmp)?")
    for old in work.iterdir():
        if stale.fullmatch(old.name):
            old.unlink()
    print(f"generating {path.name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    # In a child: the parent stays free of torch and of the freed-but-kept heap of a 3 GB dict.
    try:
        measure(
            [sys.executable, "-c", GENERATE, json.dumps(dims), str(tmp)],
            timeout=timeout,
            env=dict(os.environ),
        )
    except BenchError as exc:
        tmp.unlink(missing_ok=True)
        raise BenchError(f"generating {path.name}: {exc}") from None
    os.replace(tmp, path)  # a killed run leaves a .tmp, never a truncated checkpoint under the final name
    print(f"  {path.stat().st_size:,} bytes in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return path


# -- running one load ----------------------------------------------------------------------------------------


def mem_available() -> int:
    meminfo = Path("/proc/meminfo").read_text().split()
    return int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024


@dataclass
class Run:
    model: str
    device: str
    case: str
    cold: bool
    ok: bool
    in_s: float | None = None  # the load call
    whole_s: float | None = None  # spawn to exit
    rss_bytes: int | None = None
    gpu_bytes: int | None = None
    weight_bytes: int | None = None  # parameters and buffers of the loaded model
    import_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)  # the command's report: open, build, ...
    check: str = ""  # "ok", or what was wrong with the loaded model
    cpu_s: float | None = None
    bg_cpu_s: float | None = None
    idle_load: float | None = None
    error: str | None = None


def _whisperctl() -> list[str]:
    """The console script, or ``python -m whisperctl`` where the package is not installed (a source tree)."""
    script = BIN / "whisperctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "whisperctl"]


def _command(case: Case, path: Path, device: str) -> list[str]:
    if case.tool == "cli":
        cmd = [*_whisperctl(), "load", str(path), "--device", device, "--json"]
        return cmd + (["--dtype", case.dtype] if case.dtype != "fp32" else [])
    args = {
        "tool": case.tool,
        "path": str(path),
        "device": device,
        "dtype": case.dtype,
        "into": case.into,
        "staged": case.staged,
    }
    return [sys.executable, "-c", CHILD, json.dumps(args)]


def _check(case: Case, device: str, devices: list[str], dtypes: list[str], parameters: int, want: int) -> str:
    problems = []
    if any(d.split(":")[0] != device.split(":")[0] for d in devices):
        problems.append(f"devices {'+'.join(devices)}")
    allowed = {"float32"} if case.dtype == "fp32" else {"float16"}
    if case.into == "whisper":
        allowed.add("float32")  # openai-whisper's LayerNorm keeps float32 weights
    if not set(dtypes) <= allowed:
        problems.append(f"dtypes {'+'.join(dtypes)}")
    if parameters != want:
        problems.append(f"{parameters:,} parameters, expected {want:,}")
    return "; ".join(problems) or "ok"


def measure(cmd: Sequence[str], *, timeout: float, env: dict[str, str]) -> tuple[float, Any, str, str]:
    """Run ``cmd``: wall time, rusage (from ``wait4``), stdout, stderr; killed at ``timeout``."""
    with (
        open(os.devnull, "rb") as null,
        tempfile.TemporaryFile(prefix="whisperctl-bench-load-") as out,
        tempfile.TemporaryFile(prefix="whisperctl-bench-load-") as err,
    ):
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdin=null, stdout=out, stderr=err, env=env)
        seconds, usage, killed = wait_timed(proc, t0, timeout)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    if killed:
        raise BenchError(f"timed out after {timeout:.0f} s")
    if proc.returncode != 0:
        tail = " ".join(stderr.strip().splitlines()[-2:])[-300:]
        raise BenchError(f"exit {proc.returncode}: {tail}")
    return seconds, usage, stdout, stderr


def run_case(ctx: Context, model: str, path: Path, device: str, case: Case, *, cold: bool = False) -> Run:
    run = Run(model=model, device=device, case=case.key, cold=cold, ok=False)
    run.idle_load = wait_for_idle(ctx.idle_wait)
    if cold:
        evict(path)
    else:
        # Warm means warm for every run: a kernel may reclaim page cache left unused for a while (this VM
        # runs DAMON with a pageout scheme for memory idle 30 s), which made some "warm" loads partly cold.
        read_file(path)
    busy0 = busy_cpu()
    try:
        seconds, usage, stdout, _ = measure(_command(case, path, device), timeout=ctx.timeout, env=ctx.env)
        report = json.loads(stdout.strip().splitlines()[-1] if case.tool != "cli" else stdout)
    except (BenchError, ValueError, IndexError) as exc:
        run.error = str(exc) or type(exc).__name__
        return run
    run.cpu_s = usage.ru_utime + usage.ru_stime
    run.bg_cpu_s = max(0.0, busy_cpu() - busy0 - run.cpu_s)
    run.whole_s, run.rss_bytes = seconds, usage.ru_maxrss * 1024
    want = ctx.parameters[model]
    if case.tool == "cli":
        run.in_s = report["seconds"]["total"]
        run.phases = {k: v for k, v in report["seconds"].items() if k != "total"}
        run.gpu_bytes = report.get("peak_gpu_bytes")
        run.weight_bytes = sum(p["bytes"] for p in report["parts"])
        devices = sorted({d for p in report["parts"] for d in p["device"].split("+")})
        dtypes = sorted({d for p in report["parts"] for d in p["dtype"].split("+")})
        run.check = _check(case, device, devices, dtypes, report["parameters"]["total"], want)
    else:
        run.in_s, run.import_s = report["load_s"], report["import_s"]
        run.gpu_bytes, run.weight_bytes = report["peak_gpu_bytes"], report["weight_bytes"]
        run.check = _check(case, device, report["devices"], report["dtypes"], report["parameters"], want)
    run.ok = run.check == "ok" or case.tool in ("whisper", "torch")  # references, not checked
    return run


# -- the report ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    """The median of one case's runs (times), and the highest memory."""

    model: str
    device: str
    case: str
    cold: bool
    runs: int
    failed: int
    in_s: float | None
    whole_s: float | None
    rss_bytes: int | None
    gpu_bytes: int | None
    weight_bytes: int | None
    import_s: float | None
    phases: dict[str, float]
    check: str
    bg_cpu_s: float | None
    error: str | None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _max(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def combine(runs: list[Run]) -> list[Row]:
    groups: dict[tuple[str, str, str, bool], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.model, r.device, r.case, r.cold), []).append(r)
    rows = []
    for (model, device, case, cold), group in groups.items():
        good = [r for r in group if r.error is None]
        phases = {k: _median([r.phases.get(k) for r in good]) for k in (good[0].phases if good else {})}
        checks = sorted({r.check for r in good if r.check != "ok"})
        rows.append(
            Row(
                model=model,
                device=device,
                case=case,
                cold=cold,
                runs=len(group),
                failed=sum(not r.ok for r in group),
                in_s=_median([r.in_s for r in good]),
                whole_s=_median([r.whole_s for r in good]),
                rss_bytes=_max([r.rss_bytes for r in good]),
                gpu_bytes=_max([r.gpu_bytes for r in good]),
                weight_bytes=_max([r.weight_bytes for r in good]),
                import_s=_median([r.import_s for r in good]),
                phases={k: v for k, v in phases.items() if v is not None},
                check="; ".join(checks) or ("ok" if good else ""),
                bg_cpu_s=_median([r.bg_cpu_s for r in good]),
                error=next((r.error for r in group if r.error), None),
            )
        )
    return rows


def _find(rows: list[Row], model: str, device: str, case: str, cold: bool = False) -> Row | None:
    return next((r for r in rows if (r.model, r.device, r.case, r.cold) == (model, device, case, cold)), None)


def _gib(value: int | None) -> float | None:
    return value / GiB if value is not None else None


def targets(rows: list[Row], devices: Sequence[str], cold_read_s: dict[str, float]) -> list[tuple[bool, str]]:
    """The issue's targets that this run measured, one (passed, line) each; missing figures fail."""
    checks: list[tuple[bool, str]] = []
    m = TARGET_MODEL

    def at_least(value: float | None, bound: float, text: str, spec: str = ".1f", unit: str = "x") -> None:
        checks.append(
            (value is not None and value >= bound, f"{text}: {fmt(value, spec, unit)} (>= {bound}{unit})")
        )

    def at_most(value: float | None, bound: float, text: str, spec: str = ".2f", unit: str = "x") -> None:
        checks.append(
            (value is not None and value <= bound, f"{text}: {fmt(value, spec, unit)} (<= {bound}{unit})")
        )

    if any(r.model == m and r.device == "cpu" for r in rows):
        w, ctl = _find(rows, m, "cpu", WHISPER), _find(rows, m, "cpu", "whisperctl.load_model")
        fp16 = _find(rows, m, "cpu", "whisperctl.load_model fp16")
        at_least(ratio(w and w.in_s, ctl and ctl.in_s), 6, f"CPU {m} fp32, in-process speed-up")
        at_least(ratio(w and w.whole_s, ctl and ctl.whole_s), 4, f"CPU {m} fp32, whole-process speed-up")
        at_most(ratio(ctl and ctl.rss_bytes, w and w.rss_bytes), 0.8, f"CPU {m} fp32, peak RSS / whisper's")
        at_least(ratio(w and w.whole_s, fp16 and fp16.whole_s), 8, f"CPU {m} fp16, whole-process speed-up")
    cuda = next((d for d in devices if d.startswith("cuda")), None)
    if cuda and any(r.model == m and r.device == cuda for r in rows):
        w, fp16 = _find(rows, m, cuda, WHISPER), _find(rows, m, cuda, "whisperctl.load_model fp16")
        cold = _find(rows, m, cuda, COLD.key, cold=True)
        t = fp16.in_s if fp16 else None
        at_most(t, 0.8, f"GPU {m} fp16, warm in-process", unit=" s")
        at_least(ratio(w and w.in_s, t), 10, f"GPU {m} fp16, in-process speed-up")
        gpu = ratio(fp16 and fp16.gpu_bytes, fp16 and fp16.weight_bytes)
        at_most(gpu, 1.1, f"GPU {m} fp16, peak GPU memory / weights")
        read = cold_read_s.get(m)
        text = f"GPU {m} fp16, cold in-process / cold read of the file ({fmt(read, '.2f', ' s')})"
        at_most(ratio(cold and cold.in_s, read), 1.3, text)
    ours = [r for r in rows if r.case != WHISPER and not r.case.startswith(FLOOR)]
    if ours:
        bad = [f"{r.model}/{r.device}/{r.case}" for r in ours if r.failed or r.check != "ok"]
        text = "every whisperctl load succeeded, with the expected device, dtype and parameter count"
        checks.append((not bad, text + (f" (not: {', '.join(bad)})" if bad else "")))
    return checks


def render(rows: list[Row], info: dict[str, str], args: argparse.Namespace, extra: dict[str, Any]) -> str:
    lines = [
        f"# Load benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        f"Generated checkpoints of the official dims (fp16, random values); {args.runs} run(s) per case, "
        "interleaved, each in a fresh process; median times, highest peak memory; warm page cache (the file "
        "is read just before each run) unless *cold*. in-process = the load call (for the command: its "
        "report's `seconds.total`); "
        "whole-process = spawn to exit, imports included. Speed-ups and the RSS ratio are against "
        f"`{WHISPER}` on the same model and device. GiB = 2^30 bytes.",
    ]
    for device in extra["devices"]:
        drows = [r for r in rows if r.device == device]
        if not drows:
            continue
        gpu = device.startswith("cuda")
        lines += [
            "",
            f"## {device}" + (f" ({info.get('gpu', '')})" if gpu else ""),
            "",
            "| model | tool | in-process s | whole-process s | peak RSS GiB |"
            + (" peak GPU GiB | weights GiB |" if gpu else "")
            + " in-process speed-up | whole-process speed-up | RSS ratio | note |",
            "|---|---|---:|---:|---:|" + ("---:|---:|" if gpu else "") + "---:|---:|---:|---|",
        ]
        for r in drows:
            w = _find(rows, r.model, device, WHISPER)
            ref = r is w
            cells = [
                r.model,
                r.case,
                fmt(r.in_s, ".2f"),
                fmt(r.whole_s, ".2f"),
                fmt(_gib(r.rss_bytes), ".2f"),
            ]
            if gpu:
                cells += [fmt(_gib(r.gpu_bytes), ".2f"), fmt(_gib(r.weight_bytes), ".2f")]
            cells += [
                "" if ref else fmt(ratio(w and w.in_s, r.in_s), ".1f", "x"),
                "" if ref or r.cold else fmt(ratio(w and w.whole_s, r.whole_s), ".1f", "x"),
                "" if ref else fmt(ratio(r.rss_bytes, w and w.rss_bytes), ".2f", "x"),
                _note(r),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if extra["cuda_note"]:
        lines += ["", extra["cuda_note"]]
    if extra["cold_read_s"]:
        reads = ", ".join(f"{m} {s:.2f} s" for m, s in extra["cold_read_s"].items())
        lines += ["", f"Reading the file cold (after `posix_fadvise(DONTNEED)`, 16 MiB reads): {reads}."]
    for device in extra["devices"]:
        for m in dict.fromkeys(r.model for r in rows if r.device == device):
            floor = _find(rows, m, device, FLOOR)
            if floor is None:
                continue
            parts = []
            for key, cold in (("whisperctl.load_model fp16", False), (COLD.key, True)):
                ours = _find(rows, m, device, key, cold=cold)
                base = _find(rows, m, device, FLOOR + (", cold" if cold else ""), cold=cold)
                times = ratio(ours and ours.in_s, base and base.in_s)
                parts.append(f"{'cold' if cold else 'warm'} {fmt(times, '.2f', 'x')}")
            lines += ["", f"{m} on {device}: whisperctl fp16 in-process / the floor's: {', '.join(parts)}."]
    lines += ["", "Targets (issue; large-v3):", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'} {text}" for ok, text in extra["targets"]]
    if not any(r.model == TARGET_MODEL for r in rows):
        lines.append(
            f"- speed and memory targets not measured: they are for {TARGET_MODEL}, not in `--models`"
        )
    if len(extra["sources"]) > 1:
        lines += [
            "",
            f"Warning: whisperctl's source changed during the benchmark ({' -> '.join(extra['sources'])}).",
        ]
    noisy = [r for r in rows if r.in_s and r.whole_s and (r.bg_cpu_s or 0.0) > r.whole_s / 3]
    if noisy:
        cells = ", ".join(f"{r.model}/{r.device}/{r.case}" for r in noisy)
        lines += ["", f"Warning: other processes used much CPU during {len(noisy)} row(s): {cells}."]
    return "\n".join(lines)


def _note(r: Row) -> str:
    notes = []
    if r.phases:
        notes.append(" ".join(f"{k} {v:.2f}" for k, v in r.phases.items()))
    elif r.import_s is not None:
        notes.append(f"imports {r.import_s:.2f}")
    if r.check not in ("ok", "") and r.case != WHISPER and not r.case.startswith(FLOOR):
        notes.append(f"CHECK FAILED: {r.check}")
    if r.failed:
        notes.append(f"{r.failed}/{r.runs} runs failed: {(r.error or '').replace('|', '/')[:200]}")
    return "; ".join(notes)


# -- machine -------------------------------------------------------------------------------------------------
def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return "?"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[-1] if text else "?"


def machine_info(work: Path, probe: dict[str, Any]) -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_kib = int(meminfo[meminfo.index("MemTotal:") + 1])
    cpu = "?"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    head = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kib / MiB:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "filesystem": _version(["findmnt", "-n", "-o", "FSTYPE", "--target", str(work)]),
        "python": platform.python_version(),
        "torch": str(probe.get("torch", "?")),
        "whisperctl": f"{dist_version('whisperctl')} (git {head}"
        f"{'+uncommitted src changes' if dirty not in ('', '?') else ''}, source {source_fingerprint()})",
        "openai-whisper": dist_version("openai-whisper"),
    }
    if probe.get("gpu"):
        info["gpu"] = f"{probe['gpu']}, {probe['gpu_memory'] / GiB:.0f} GiB"
    return info


# -- main ----------------------------------------------------------------------------------------------------
@dataclass
class Context:
    env: dict[str, str]
    timeout: float
    idle_wait: float
    parameters: dict[str, int]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (%(default)s)")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per case; medians are reported (%(default)s)"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="all: the CPU, and CUDA when available (%(default)s)",
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for the CPUs to be idle (%(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per load, seconds (%(default)s)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".bench" / "load")
    parser.add_argument(
        "--output", default="load", help="results go to bench/results/OUTPUT.md and .json (%(default)s)"
    )
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        parser.error(f"--models: choose among {', '.join(MODELS)} (got {', '.join(bad) or 'none'})")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work: Path = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPERCTL_")}
    env.update(NO_COLOR="1", WHISPERCTL_CACHE_DIR=str(work / "cache"), PYTHONUNBUFFERED="1")
    probe = json.loads(_version([sys.executable, "-c", PROBE]))
    devices = ["cpu"] if args.device != "cuda" else []
    cuda_note = ""
    if args.device in ("cuda", "all"):
        if probe["cuda"]:
            devices.append("cuda:0")
        else:
            cuda_note = (
                "GPU rows skipped: CUDA is not available on this machine (torch " + probe["torch"] + ")."
            )
            print(cuda_note, file=sys.stderr)
    info = machine_info(work, probe)
    ctx = Context(env, args.timeout, args.idle_wait, {m: expected_parameters(m) for m in args.models})
    sources = [source_fingerprint()]
    runs: list[Run] = []
    cold_read_s: dict[str, float] = {}
    low_memory: list[str] = []
    # Import caches (bytecode, shared libraries) are warmed too: the first `import whisper` is seconds slower.
    for cmd in (
        [sys.executable, "-c", "import whisper, whisperctl.models.loader"],
        [*_whisperctl(), "--help"],
    ):
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    for model in args.models:
        path = ensure_checkpoint(work, model, timeout=args.timeout)
        read_file(path)  # warm the page cache
        if mem_available() < path.stat().st_size * 3.5:  # openai-whisper's peak is about 3x the file
            low_memory.append(f"{model} ({mem_available() / GiB:.1f} GiB available)")
        for device in devices:
            for i in range(args.runs):
                for case in CASES:
                    if case.tool == "cli" and device.startswith("cuda") and case.dtype == "fp32":
                        continue  # on the GPU the command's fp16 row is the one users run
                    if case.gpu_only and not device.startswith("cuda"):
                        continue
                    run = run_case(ctx, model, path, device, case)
                    runs.append(run)
                    print(
                        f"{model:9} {device:6} {i + 1}/{args.runs} {case.key:38} "
                        f"in {fmt(run.in_s, '.2f')} s, whole {fmt(run.whole_s, '.2f')} s, "
                        f"RSS {fmt(_gib(run.rss_bytes), '.2f')} GiB"
                        + (
                            f", GPU {fmt(_gib(run.gpu_bytes), '.2f')} GiB"
                            if run.gpu_bytes is not None
                            else ""
                        )
                        + (f"  ERROR {run.error}" if run.error else "")
                        + (f"  CHECK {run.check}" if not run.ok and run.check not in ("ok", "") else ""),
                        file=sys.stderr,
                        flush=True,
                    )
            if device.startswith("cuda"):
                reads = []
                for _ in range(args.runs):
                    evict(path)
                    reads.append(read_file(path))
                    for case in COLD_CASES:
                        runs.append(run_case(ctx, model, path, device, case, cold=True))
                cold_read_s[model] = statistics.median(reads)
                read_file(path)
        sources.append(source_fingerprint())
    rows = combine(runs)
    checks = targets(rows, devices, cold_read_s)
    extra = {
        "devices": devices,
        "cuda_note": cuda_note,
        "cold_read_s": cold_read_s,
        "targets": checks,
        "sources": list(dict.fromkeys(sources)),
    }
    text = render(rows, info, args, extra)
    if low_memory:
        text += "\n\nWarning: little memory was available before " + ", ".join(low_memory) + "."
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.output}.md").write_text(text + "\n")
    data = {
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "generator": GENERATOR,
        "rows": [asdict(r) for r in rows],
        "runs": [asdict(r) for r in runs],
        "cold_read_s": cold_read_s,
        "cuda_note": cuda_note,
        "targets": [{"pass": ok, "target": text} for ok, text in checks],
        "sources": extra["sources"],
    }
    (out / f"{args.output}.json").write_text(json.dumps(data, indent=1) + "\n")
    return 2 if any(not ok for ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
