"""Copies to the device through the ring of staging buffers: every byte arrives, each tensor is handed over
only once it has been sent, conversions happen on the way; on CUDA, loads equal the direct path's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import whisperctl  # noqa: E402
from whisperctl.models import loader  # noqa: E402
from whisperctl.models.staging import Job, copy_to_device  # noqa: E402

from .test_loader import SMALLEST, _inputs, save_checkpoint  # noqa: E402

CUDA = torch.cuda.is_available()


def _sources() -> list[Any]:
    g = torch.Generator().manual_seed(3)
    return [
        torch.randn(37, 5, generator=g).half(),  # spans several buffers
        torch.tensor(1.5, dtype=torch.float16),  # 0-dim
        torch.empty(0, 4, dtype=torch.float16),  # nothing to send
        torch.randn(3, generator=g).half(),
        torch.randn(6, 9, generator=g).t(),  # not contiguous, float32
        torch.randn(129, generator=g),  # float32, carried as float16 (converted on the CPU first)
        torch.arange(40, dtype=torch.int64),
    ]


@pytest.mark.parametrize(("slot_bytes", "slots"), [(64, 3), (7, 2), (1 << 20, 4)])
def test_every_tensor_arrives_whole_and_is_handed_over_after(slot_bytes: int, slots: int) -> None:
    sources = _sources()
    dtypes = [s.dtype for s in sources]
    dtypes[5] = torch.float16
    seen: list[tuple[int, Any]] = []

    def done(i: int, dest: Any) -> None:
        seen.append((i, dest.clone()))  # what the tensor holds when handed over: every byte already there

    jobs = [
        Job(s, d, lambda dest, i=i: done(i, dest))
        for i, (s, d) in enumerate(zip(sources, dtypes, strict=True))
    ]
    copy_to_device(jobs, torch.device("cpu"), slot_bytes=slot_bytes, slots=slots)
    assert [i for i, _ in seen] == list(range(len(sources)))
    for (_, got), source, dtype in zip(seen, sources, dtypes, strict=True):
        assert got.shape == source.shape and got.dtype == dtype and got.is_contiguous()
        assert torch.equal(got, source.to(dtype))


def test_mapped_sources_are_read_ahead_and_copied(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    state = {f"t{i}": torch.randn(1000 + i, generator=g).half() for i in range(20)}
    torch.save(state, tmp_path / "w.pt")
    mapped = torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)
    out: dict[str, Any] = {}
    jobs = [Job(t, t.dtype, lambda dest, k=k: out.__setitem__(k, dest)) for k, t in mapped.items()]
    copy_to_device(jobs, torch.device("cpu"), slot_bytes=4096, slots=2, read_ahead=8192)
    assert out.keys() == state.keys() and all(torch.equal(out[k], state[k]) for k in state)


def test_no_jobs_is_nothing() -> None:
    copy_to_device([], torch.device("cpu"))


# -- CUDA --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("staging") / "smallest.pt", SMALLEST, seed=5)


@pytest.fixture
def direct() -> Iterator[None]:
    loader.STAGED_COPIES = False
    try:
        yield
    finally:
        loader.STAGED_COPIES = True


def _state(model: Any) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("into", ["whisperctl", "whisper"])
def test_cuda_staged_load_equals_the_cpu_load(checkpoint: Path, dtype: str, into: str) -> None:
    if into == "whisper":
        pytest.importorskip("whisper")
    staged = whisperctl.load(checkpoint, device="cuda", dtype=dtype, into=into)  # type: ignore[arg-type]
    on_cpu = whisperctl.load(checkpoint, device="cpu", dtype=dtype, into=into)  # type: ignore[arg-type]
    got, want = _state(staged.model), _state(on_cpu.model)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    assert {str(p.device) for p in staged.model.parameters()} == {"cuda:0"}
    weights = sum(t.numel() * t.element_size() for t in [*staged.model.parameters(), *staged.model.buffers()])
    peak = staged.report.peak_gpu_bytes
    assert peak is not None and peak <= weights + (8 << 20)  # the model plus one tensor and rounding


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_staged_equals_direct(checkpoint: Path, request: pytest.FixtureRequest) -> None:
    staged = _state(whisperctl.load_model(checkpoint, device="cuda", dtype="fp16"))
    request.getfixturevalue("direct")
    assert not loader.STAGED_COPIES
    plain = _state(whisperctl.load_model(checkpoint, device="cuda", dtype="fp16"))
    assert staged.keys() == plain.keys() and all(torch.equal(staged[k], plain[k]) for k in plain)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_into_whisper_equals_openai_whisper_on_cuda(checkpoint: Path) -> None:
    whisper = pytest.importorskip("whisper")
    ours = whisperctl.load_model(checkpoint, device="cuda", into="whisper")
    theirs = whisper.load_model(str(checkpoint), device="cuda")
    got, want = _state(ours), _state(theirs)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    mel, tokens = _inputs(SMALLEST)
    with torch.no_grad():
        a = ours.logits(tokens.cuda(), ours.embed_audio(mel.cuda()))
        b = theirs.logits(tokens.cuda(), theirs.embed_audio(mel.cuda()))
    assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_every_format_loads_alike(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from whisperctl.api.convert import convert

    want = _state(whisperctl.load_model(checkpoint, device="cuda", dtype="fp16"))
    for fmt in ("hf", "ggml"):
        out = tmp_path / fmt
        convert(checkpoint, out, to=fmt)
        got = _state(whisperctl.load_model(out, device="cuda", dtype="fp16"))
        assert got.keys() == want.keys(), fmt
        assert all(torch.equal(got[k], want[k]) for k in want), fmt


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "auto"])
def test_cuda_command_in_a_fresh_process(checkpoint: Path, device: str) -> None:
    """The command's first CUDA call is the loader's own (no context made before it, unlike the library
    tests above, which share one process)."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "whisperctl",
            "load",
            str(checkpoint),
            "--device",
            device,
            "--dtype",
            "fp16",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["device"] == "cuda:0" and {p["device"] for p in report["parts"]} == {"cuda:0"}
    weights = sum(p["bytes"] for p in report["parts"])
    assert 0 < report["peak_gpu_bytes"] <= weights + (8 << 20)
