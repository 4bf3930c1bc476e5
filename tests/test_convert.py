"""``whisperctl convert``: what it refuses, and that OUT is only ever a finished, checked model."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import whisperctl  # noqa: E402
from whisperctl.models.formats import read_model, writers  # noqa: E402
from whisperctl.models.formats.writers import Writer  # noqa: E402
from whisperctl.store.layout import temporary_target  # noqa: E402

from .helpers import Cli, sha256_hex  # noqa: E402
from .httpserver import HTTPServer  # noqa: E402
from .test_loader import SMALLEST, TINY, _register, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("src") / "small.pt", SMALLEST, seed=5)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if temporary_target(p.name) is not None]


def test_existing_out_is_refused_without_force(source: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out.pt"
    out.write_bytes(b"keep me")
    r = cli("convert", str(source), str(out), "--to", "openai")
    assert r.exit_code == 2 and "--force" in r.stderr and str(out) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert out.read_bytes() == b"keep me"
    r = cli("convert", str(source), str(out), "--to", "openai", "--force")
    assert r.exit_code == 0, r.stderr
    assert torch.load(out, weights_only=True)["dims"] == SMALLEST.as_dict()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--to", "onnx"], 2, "--to 'onnx': not one of openai, hf, ct2, ggml"),
        (["--to", "openai", "--dtype", "int8"], 2, "--dtype 'int8': not one of fp16, fp32"),
    ],
)
def test_bad_options_exit_2(
    source: Path, tmp_path: Path, cli: Cli, args: list[str], code: int, words: str
) -> None:
    r = cli("convert", str(source), str(tmp_path / "x"), *args)
    assert r.exit_code == code and words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_unreadable_source_exits_4_in_one_line(tmp_path: Path, cli: Cli) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_text("not a model\n")
    r = cli("convert", str(bad), str(tmp_path / "out.pt"), "--to", "openai")
    assert r.exit_code == 4 and str(bad) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("convert", str(empty), str(tmp_path / "out.pt"), "--to", "openai")
    assert r.exit_code == 4 and "a directory with no model in it" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.pt"]


def test_missing_out_directory_exits_6(source: Path, tmp_path: Path, cli: Cli) -> None:
    r = cli("convert", str(source), str(tmp_path / "no" / "out.pt"), "--to", "openai")
    assert r.exit_code == 6 and "no such directory" in r.stderr


def test_out_may_not_be_the_source(source: Path, tmp_path: Path, cli: Cli) -> None:
    r = cli("convert", str(source), str(source), "--to", "openai", "--force")
    assert r.exit_code == 2 and "is the source model itself" in r.stderr


def _failing(fault: BaseException) -> Writer:
    """The real openai writer, then a failure once its file is written (a full disk, a Ctrl-C)."""
    from whisperctl.models.formats.openai_write import write as real

    def write(model: Any, weights: Mapping[str, Any], out: Path, *, dtype: str) -> list[Path]:
        real(model, weights, out, dtype=dtype)
        assert out.stat().st_size > 0
        raise fault

    return write


@pytest.mark.parametrize(
    ("fault", "code"),
    [(OSError(28, "No space left on device"), 6), (KeyboardInterrupt(), 130)],
)
def test_a_failed_conversion_leaves_the_old_out_and_no_temporary(
    source: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, fault: BaseException, code: int
) -> None:
    out = tmp_path / "out.pt"
    out.write_bytes(b"the old one")
    monkeypatch.setattr(writers, "load_writer", lambda fmt: _failing(fault))
    r = cli("convert", str(source), str(out), "--to", "openai", "--force")
    assert r.exit_code == code
    assert out.read_bytes() == b"the old one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]


def test_force_replaces_a_directory_only_once_the_new_one_is_complete(
    source: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # A file output over a directory: the old directory goes only after the new file is in place.
    r = cli("convert", str(source), str(out), "--to", "openai", "--force", "--json")
    assert r.exit_code == 0, r.stderr
    assert out.is_file() and _leftovers(tmp_path) == []
    assert json.loads(r.stdout)["files"][0]["sha256"] == _digest(out)


_KILLED = """
import sys
from whisperctl.api import convert
convert(sys.argv[1], sys.argv[2], "openai", dtype="fp32")
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_during_conversion_leaves_nothing_under_out(tmp_path: Path, sig: signal.Signals) -> None:
    """Killed while the output is being written: OUT never appears (SIGKILL leaves only the hidden
    temporary, which nothing mistakes for a model; Ctrl-C removes it too)."""
    src = save_checkpoint(tmp_path / "tiny.pt", TINY, seed=1)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(src), str(out)], env=env)
    deadline = time.monotonic() + 120
    while not _leftovers(work) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the conversion ended before a temporary was seen"
    proc.send_signal(sig)
    proc.wait(60)
    assert not out.exists()
    left = _leftovers(work)
    assert all(temporary_target(n) == "out.pt" for n in left)
    if sig == signal.SIGINT:
        assert proc.returncode != 0 and left == []


def test_a_name_is_downloaded_verified_then_converted(
    source: Path, server: HTTPServer, cache_dir: Path, tmp_path: Path
) -> None:
    data = source.read_bytes()
    server.add("/m/mini.pt", data)
    registry = _register(tmp_path, "mini", data, server.url("/m/mini.pt"))
    record = whisperctl.convert(
        "mini", tmp_path / "mini-fp32.pt", "openai", dtype="fp32", cache_dir=cache_dir, registry=registry
    )
    assert record.name == "mini" and record.integrity == "downloaded, SHA-256 verified"
    assert record.source_path == cache_dir / "mini.pt" and sha256_hex((cache_dir / "mini.pt").read_bytes())
    assert record.dtype == "float32" and record.files[0].path == "mini-fp32.pt"
    written = torch.load(tmp_path / "mini-fp32.pt", weights_only=True)["model_state_dict"]
    original = torch.load(source, weights_only=True)["model_state_dict"]
    assert all(
        written[k].dtype == torch.float32 and torch.equal(written[k].half(), v) for k, v in original.items()
    )
    assert record.peak_rss_bytes > 0 and record.seconds["total"] > 0


def test_a_named_model_keeps_its_registry_alignment_heads(
    source: Path, server: HTTPServer, cache_dir: Path, tmp_path: Path
) -> None:
    """An official file carries no heads; its registry entry does: the written model must keep them (in the
    HF generation config, the CT2 config and the .pt), or word timestamps use the wrong heads."""
    data = source.read_bytes()
    server.add("/m/mini.pt", data)
    heads = "alignment_heads = [[2, 1], [1, 3]]\n"
    registry = _register(tmp_path, "mini", data, server.url("/m/mini.pt"), heads)
    kw = {"cache_dir": cache_dir, "registry": registry}
    whisperctl.convert("mini", tmp_path / "hf", "hf", **kw)  # type: ignore[arg-type]
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text("utf-8"))
    assert sorted(map(tuple, generation["alignment_heads"])) == [(1, 3), (2, 1)]
    whisperctl.convert("mini", tmp_path / "ct2", "ct2", **kw)  # type: ignore[arg-type]
    config = json.loads((tmp_path / "ct2" / "config.json").read_text("utf-8"))
    assert sorted(map(tuple, config["alignment_heads"])) == [(1, 3), (2, 1)]
    whisperctl.convert("mini", tmp_path / "mini.pt", "openai", **kw)  # type: ignore[arg-type]
    assert sorted(read_model(tmp_path / "mini.pt").alignment_heads or ()) == [(1, 3), (2, 1)]


def test_a_missing_extra_is_one_line_naming_the_install(
    source: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed: importing it fails
    r = cli("convert", str(source), str(tmp_path / "ct2"), "--to", "ct2")
    assert r.exit_code == 2 and "pip install 'whisperctl[ct2]'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    error = writers.dependency_error("hf", ModuleNotFoundError("no safetensors", name="safetensors"))
    assert str(error) == "converting to hf needs safetensors: pip install 'whisperctl[hf]'"


def test_a_writer_module_that_is_not_there_is_a_usage_error(
    source: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = writers.WriterSpec("whisperctl.models.formats.no_such_write", None, directory=False)
    monkeypatch.setitem(writers.WRITERS, "ggml", gone)
    r = cli("convert", str(source), str(tmp_path / "g.bin"), "--to", "ggml")
    assert r.exit_code == 2 and "no ggml writer" in r.stderr
    assert not (tmp_path / "g.bin").exists()


@pytest.mark.parametrize(("fmt", "big"), [("hf", "model.safetensors"), ("ct2", "model.bin")])
def test_a_directory_output_is_hashed_once_and_its_sums_pass_sha256sum(
    source: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, fmt: str, big: str
) -> None:
    """The big file is hashed as it is written (never read again for its digest), every other file after;
    the SHA256SUMS holds for the real sha256sum; the phases add up to at most the total."""
    convert_module = importlib.import_module("whisperctl.api.convert")  # the package's name is the function
    hashed_after: list[str] = []
    real_sha256_file = convert_module.sha256_file

    def counting(path: Path | str, **kw: Any) -> str:
        hashed_after.append(Path(path).name)
        return real_sha256_file(path, **kw)

    monkeypatch.setattr(convert_module, "sha256_file", counting)
    out = tmp_path / fmt
    r = cli("convert", str(source), str(out), "--to", fmt, "--dtype", "fp32", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    files = {f["path"]: f for f in report["files"]}
    assert big in files and big not in hashed_after
    assert sorted(hashed_after) == sorted(p for p in files if p != big)
    assert all(
        f["sha256"] == _digest(out / p) and f["size_bytes"] == (out / p).stat().st_size
        for p, f in files.items()
    )
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{big}: OK" in check.stdout and "FAILED" not in check.stdout
    seconds = report["seconds"]
    assert set(seconds) == {"start", "read", "write", "check", "seal", "place", "total"}
    assert all(v >= 0 for v in seconds.values())
    assert sum(v for k, v in seconds.items() if k != "total") <= seconds["total"] + 0.001  # rounding


def test_the_phases_are_one_human_line(source: Path, tmp_path: Path, cli: Cli) -> None:
    r = cli("convert", str(source), str(tmp_path / "g.bin"), "--to", "ggml")
    assert r.exit_code == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("seconds: ")]
    phases = dict(part.split() for part in line.removeprefix("seconds: ").split(", "))
    assert list(phases) == ["start", "read", "write", "check", "seal", "place"]
    assert all(float(v) >= 0 for v in phases.values())


class _Failing(Mapping[str, Any]):
    """The weights, until the ``after``-th tensor is fetched: then ``fault`` (mid-way through the file)."""

    def __init__(self, weights: Mapping[str, Any], after: int, fault: BaseException) -> None:
        self._weights, self._left, self._fault = weights, after, fault

    def __getitem__(self, key: str) -> Any:
        self._left -= 1
        if self._left < 0:
            raise self._fault
        return self._weights[key]

    def __iter__(self) -> Any:
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)


@pytest.mark.parametrize(
    ("fault", "code"), [(OSError(28, "No space left on device"), 6), (KeyboardInterrupt(), 130)]
)
def test_a_writer_failing_mid_file_leaves_nothing_and_no_thread(
    source: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, fault: BaseException, code: int
) -> None:
    import threading

    from whisperctl.models.formats.ggml_write import write as real

    def write(model: Any, weights: Mapping[str, Any], out: Path, *, dtype: str) -> list[Path]:
        return real(model, _Failing(weights, len(weights) + 10, fault), out, dtype=dtype)

    monkeypatch.setattr(writers, "load_writer", lambda fmt: write)
    r = cli("convert", str(source), str(tmp_path / "g.bin"), "--to", "ggml")
    assert r.exit_code == code
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert [t for t in threading.enumerate() if t.name == "whisperctl-hasher"] == []


_LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as ENOSPC would
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.argv = ["whisperctl", "convert", *sys.argv[2:]]
runpy.run_module("whisperctl", run_name="__main__")
"""


def test_a_write_error_in_the_big_file_is_one_line_exit_6(source: Path, tmp_path: Path, cli: Cli) -> None:
    whole = tmp_path / "whole.bin"
    assert cli("convert", str(source), str(whole), "--to", "ggml").exit_code == 0
    work = tmp_path / "work"
    work.mkdir()
    out = work / "g.bin"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    limit = str(whole.stat().st_size // 2)
    args = [sys.executable, "-c", _LIMITED, limit, str(source), str(out), "--to", "ggml"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 6, proc.stderr
    assert str(out) in proc.stderr and "File too large" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(work.iterdir()) == []
