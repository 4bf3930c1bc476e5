"""Loading checkpoints: against openai-whisper's loader, every integrity path, and hostile files."""

from __future__ import annotations

import inspect as pyinspect
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import whisperctl  # noqa: E402
from whisperctl.errors import DeviceError, IntegrityError, NotCachedError, UsageError  # noqa: E402
from whisperctl.models.checkpoint import read_checkpoint  # noqa: E402
from whisperctl.models.dims import ModelDimensions, count_parameters, state_dict_shapes  # noqa: E402
from whisperctl.models.registry import Registry  # noqa: E402
from whisperctl.store.cache import Cache  # noqa: E402

from .helpers import Cli, sha256_hex, write_registry  # noqa: E402
from .httpserver import HTTPServer  # noqa: E402

TINY = Registry().get("tiny").dims
assert TINY is not None
# Small enough to be fast, but with the real vocabulary and audio context, so openai-whisper's decoding
# (tokenizer, 30 s mel) runs on it unchanged.
SMALLEST = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=4,
    n_text_layer=3,
)


def make_state_dict(dims: ModelDimensions, seed: int = 0, dtype: Any = None) -> dict[str, Any]:
    """Official layout and dtype (fp16), random values: what a trained checkpoint looks like to a loader."""
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in state_dict_shapes(dims).items():
        value = torch.randn(shape, generator=generator) * 0.05
        if key.endswith("ln.weight") or key.endswith("ln_post.weight"):
            value += 1.0
        sd[key] = value.to(dtype or torch.float16)
    return sd


def save_checkpoint(path: Path, dims: ModelDimensions, seed: int = 0, **changes: Any) -> Path:
    payload: dict[str, Any] = {"dims": dims.as_dict(), "model_state_dict": make_state_dict(dims, seed)}
    payload.update(changes)
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def smallest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "smallest.pt", SMALLEST, seed=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", TINY, seed=2)


def _inputs(dims: ModelDimensions) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(7)
    mel = torch.randn(1, dims.n_mels, 2 * dims.n_audio_ctx, generator=generator)
    tokens = torch.randint(0, dims.n_vocab, (1, 6), generator=generator)
    return mel, tokens


# -- against openai-whisper's load_model ------------------------------------------------------------


@pytest.mark.parametrize("into", ["whisperctl", "whisper"])
def test_same_outputs_as_openai_whisper_load_model(smallest: Path, into: str) -> None:
    whisper = pytest.importorskip("whisper")
    reference = whisper.load_model(str(smallest), device="cpu")
    ours = whisperctl.load_model(str(smallest), device="cpu", into=into)  # type: ignore[arg-type]
    mel, tokens = _inputs(SMALLEST)
    with torch.no_grad():
        ref_audio, our_audio = reference.embed_audio(mel), ours.embed_audio(mel)
        torch.testing.assert_close(our_audio, ref_audio, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            ours.logits(tokens, our_audio), reference.logits(tokens, ref_audio), atol=1e-4, rtol=0
        )
    assert {k: v.dtype for k, v in ours.state_dict().items()} == {
        k: v.dtype for k, v in reference.state_dict().items()
    }
    if into == "whisper":
        assert type(ours) is whisper.model.Whisper
        assert torch.equal(ours.alignment_heads.to_dense(), reference.alignment_heads.to_dense())


def test_into_whisper_decodes_like_openai_whisper(smallest: Path) -> None:
    """openai-whisper's own decoding (tokenizer, beam-less greedy search) on the model we built."""
    whisper = pytest.importorskip("whisper")
    reference = whisper.load_model(str(smallest), device="cpu")
    ours = whisperctl.load_model(str(smallest), device="cpu", into="whisper")
    mel = _inputs(SMALLEST)[0][0]
    options = whisper.DecodingOptions(language="en", sample_len=8, without_timestamps=True, fp16=False)
    expected = reference.decode(mel, options)
    got = ours.decode(mel, options)
    assert got.tokens == expected.tokens
    assert got.avg_logprob == pytest.approx(expected.avg_logprob, abs=1e-4)


def test_load_model_has_openai_whisper_signature() -> None:
    whisper = pytest.importorskip("whisper")
    ours = list(pyinspect.signature(whisperctl.load_model).parameters)
    theirs = list(pyinspect.signature(whisper.load_model).parameters)
    assert ours[: len(theirs)] == theirs


@pytest.mark.parametrize(
    ("dtype", "expected"), [("fp16", "float16"), ("bf16", "bfloat16"), (None, "float32")]
)
def test_dtypes_run_and_agree_with_fp32(smallest: Path, dtype: str | None, expected: str) -> None:
    reference = whisperctl.load_model(str(smallest), device="cpu")
    loaded = whisperctl.load(smallest, device="cpu", dtype=dtype)
    model, report = loaded.model, loaded.report
    assert {str(p.dtype) for p in model.parameters()} == {f"torch.{expected}"}
    assert report.dtype == expected and report.checkpoint_dtype == "float16"
    assert report.mapped == (expected == "float16")  # the checkpoint's own dtype on the CPU: no copy
    mel, tokens = _inputs(SMALLEST)
    with torch.no_grad():
        want = reference.logits(tokens, reference.embed_audio(mel))
        x = mel.to(getattr(torch, expected))
        got = model.logits(tokens, model.embed_audio(x))
    assert got.dtype == torch.float32
    tolerance = 1e-4 if expected == "float32" else 0.05 * float(want.abs().max())
    torch.testing.assert_close(got, want, atol=tolerance, rtol=0)


def test_report_counts_parts_and_leaves_nothing_on_meta(tiny: Path) -> None:
    loaded = whisperctl.load(tiny, device="cpu")
    report, model = loaded.report, loaded.model
    assert report.parameters == count_parameters(TINY)
    assert [p.name for p in report.parts] == ["encoder", "decoder"]
    assert sum(p.parameters for p in report.parts) == report.parameters.total == 37_184_640
    assert all(p.device == "cpu" and p.dtype == "float32" for p in report.parts)
    assert report.parts[0].bytes >= report.parts[0].parameters * 4
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert set(report.seconds) >= {"open", "build", "attach", "move", "total"}
    assert report.seconds["total"] >= report.seconds["move"] > 0
    assert report.peak_rss_bytes > 0 and report.peak_gpu_bytes is None
    assert report.alignment_heads == 12 and report.alignment_heads_source == "default"
    assert report.integrity == "not checked"


def _mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (0 when it is not mapped)."""
    ino, total, inside = str(path.stat().st_ino), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:
            inside = fields[4] == ino
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_converted_weights_release_the_file_pages(tiny: Path) -> None:
    """fp32 from an fp16 file: each tensor's file pages are dropped once converted, so the peak is the
    fp32 model, not the fp32 model plus the whole mapped file."""
    keep = whisperctl.load(tiny, device="cpu")
    assert _mapped_rss(tiny) < tiny.stat().st_size // 20
    half = whisperctl.load(tiny, device="cpu", dtype="fp16")  # kept mapped: the weights are the file
    with torch.no_grad():
        sum(float(p.float().sum()) for p in half.model.parameters())
    assert _mapped_rss(tiny) > tiny.stat().st_size // 2
    del keep, half


def test_in_memory_does_not_keep_the_file_mapped(tiny: Path) -> None:
    loaded = whisperctl.load(tiny, device="cpu", dtype="fp16", in_memory=True)
    assert not loaded.report.mapped
    if sys.platform.startswith("linux"):
        assert _mapped_rss(tiny) == 0 or str(tiny.stat().st_ino) not in Path("/proc/self/maps").read_text()


# -- names: cache, digest, download -------------------------------------------------------------------


def _register(tmp_path: Path, name: str, data: bytes, url: str, heads: str = "") -> Path:
    text = f'[models.{name}]\nurl = "{url}"\nsha256 = "{sha256_hex(data)}"\nsize = {len(data)}\n{heads}'
    return write_registry(tmp_path / "models.toml", text)


def test_named_model_is_downloaded_then_loaded(
    smallest: Path, server: HTTPServer, cache_dir: Path, tmp_path: Path, cli: Cli
) -> None:
    data = smallest.read_bytes()
    server.add("/m/mini.pt", data)
    registry = _register(
        tmp_path, "mini", data, server.url("/m/mini.pt"), "alignment_heads = [[2, 1], [2, 3]]\n"
    )
    args = ["--cache-dir", str(cache_dir), "--registry", str(registry)]
    r = cli(*args, "load", "mini", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["name"] == "mini" and report["path"] == str(cache_dir / "mini.pt")
    assert report["integrity"] == "downloaded, SHA-256 verified"
    assert report["alignment_heads"] == {"count": 2, "source": "registry"}
    assert set(report) >= {
        "name", "path", "device", "dtype", "parameters", "parts", "alignment_heads", "seconds",
        "peak_rss_bytes", "peak_gpu_bytes",
    }  # fmt: skip
    assert report["parameters"] == count_parameters(SMALLEST).as_dict()
    assert report["seconds"]["download"] > 0
    # Second time: the stamp vouches for the file, no network, no hashing.
    requests = len(server.requests_for("/m/mini.pt"))
    r = cli(*args, "load", "mini", "--device", "cpu", "--json")
    assert json.loads(r.stdout)["integrity"] == "SHA-256 verified (stamp)"
    assert len(server.requests_for("/m/mini.pt")) == requests
    r = cli(*args, "load", "mini", "--device", "cpu", "--verify", "--json")
    assert json.loads(r.stdout)["integrity"] == "SHA-256 verified (hashed now)"
    r = cli(*args, "load", "mini", "--device", "cpu")
    assert r.exit_code == 0 and "alignment heads  2 (registry)" in r.stdout


def test_offline_and_not_cached_exits_5(smallest: Path, cache_dir: Path, tmp_path: Path, cli: Cli) -> None:
    data = smallest.read_bytes()
    registry = _register(tmp_path, "mini", data, "http://127.0.0.1:9/mini.pt")
    r = cli("--cache-dir", str(cache_dir), "--registry", str(registry), "load", "mini", "--offline")
    assert r.exit_code == 5 and "offline" in r.stderr
    assert list(cache_dir.iterdir()) in ([], [cache_dir / ".whisperctl"])


def test_unstamped_file_is_hashed_and_a_wrong_one_refused(
    smallest: Path, tiny: Path, cache_dir: Path, tmp_path: Path, cli: Cli
) -> None:
    registry = _register(tmp_path, "mini", smallest.read_bytes(), "http://127.0.0.1:9/mini.pt")
    args = ["--cache-dir", str(cache_dir), "--registry", str(registry)]
    (cache_dir / "mini.pt").write_bytes(smallest.read_bytes())  # placed by another tool: no stamp
    r = cli(*args, "load", "mini", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["integrity"] == "SHA-256 verified (hashed now)"
    (cache_dir / "mini.pt").write_bytes(tiny.read_bytes())  # a valid checkpoint, but not this model
    r = cli(*args, "load", "mini")
    assert r.exit_code == 4
    assert "does not match its digest" in r.stderr and "download --force mini" in r.stderr
    wrong = sha256_hex(tiny.read_bytes())
    assert f"got {wrong}" in r.stderr
    r = cli(*args, "load", "mini")  # now from the stamp that recorded it (not hashed again)
    assert r.exit_code == 4 and f"got {wrong}" in r.stderr
    r = cli(*args, "load", "mini", "--verify")  # --verify always hashes
    assert r.exit_code == 4 and f"got {wrong}" in r.stderr


def test_official_name_gets_the_official_alignment_heads(tiny: Path, cache_dir: Path) -> None:
    """A verified `tiny` in the cache (stamped as whisperctl would after hashing) loads with tiny's heads."""
    spec = Registry().get("tiny")
    path = cache_dir / spec.filename
    path.write_bytes(tiny.read_bytes())
    Cache(cache_dir).write_stamp(spec, path.stat(), spec.sha256)  # the stamp of a genuine download
    loaded = whisperctl.load("tiny", cache_dir=cache_dir, device="cpu")
    assert loaded.report.alignment_heads_source == "official"
    assert loaded.model.alignment_heads_pairs() == spec.alignment_heads
    assert loaded.report.integrity == "SHA-256 verified (stamp)"
    whisper = pytest.importorskip("whisper")
    ours = whisperctl.load_model("tiny", download_root=str(cache_dir), into="whisper")
    reference = whisper.model.Whisper(ours.dims)  # (whisper.load_model would hash, and re-download, the file)
    reference.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny"])
    assert torch.equal(ours.alignment_heads.to_dense(), reference.alignment_heads.to_dense())


def test_path_with_sha256(smallest: Path, cli: Cli) -> None:
    good = sha256_hex(smallest.read_bytes())
    r = cli("load", str(smallest), "--sha256", good, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["integrity"] == "SHA-256 matches --sha256"
    r = cli("load", str(smallest), "--sha256", "0" * 64)
    assert r.exit_code == 4 and good in r.stderr and "0" * 64 in r.stderr
    r = cli("load", str(smallest), "--sha256", "xyz")
    assert r.exit_code == 2 and "64 hex digits" in r.stderr
    r = cli("load", str(smallest), "--verify")  # a check that cannot run is said, not skipped
    assert r.exit_code == 2 and "--sha256 HEX" in r.stderr
    r = cli("load", "tiny", "--sha256", good, "--offline")
    assert r.exit_code == 2 and "registry's digest" in r.stderr


def test_devices(smallest: Path, cli: Cli) -> None:
    if not torch.cuda.is_available():
        r = cli("load", str(smallest), "--device", "cuda")
        assert r.exit_code == 7 and "available: cpu" in r.stderr
        with pytest.raises(DeviceError):
            whisperctl.load(smallest, device="cuda:0")
    r = cli("load", str(smallest), "--device", "gpu")
    assert r.exit_code == 2 and "auto, cpu, cuda" in r.stderr
    r = cli("load", str(smallest), "--dtype", "fp8")
    assert r.exit_code == 2 and "fp32, fp16, bf16" in r.stderr
    r = cli("load", str(smallest), "--device", "auto", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_console_script_ends_without_the_interpreter_shutdown(smallest: Path, tmp_path: Path) -> None:
    """The real entry point (``os._exit`` once torch is imported): whole output, and every exit code kept."""
    command = [sys.executable, "-m", "whisperctl"]
    r = subprocess.run(
        [*command, "load", str(smallest), "--json"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["parameters"]["total"] > 0  # the JSON arrived whole through the pipe
    r = subprocess.run([*command, "load", str(smallest)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "alignment heads" in r.stdout
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = subprocess.run([*command, "load", str(bad)], capture_output=True, text=True, check=False)
    assert r.returncode == 4 and str(bad) in r.stderr and r.stderr.count("\n") == 1
    if not torch.cuda.is_available():
        r = subprocess.run(
            [*command, "load", str(smallest), "--device", "cuda"], capture_output=True, text=True, check=False
        )
        assert r.returncode == 7 and "available: cpu" in r.stderr


def test_device_is_checked_before_downloading(cache_dir: Path, tmp_path: Path, cli: Cli) -> None:
    registry = _register(tmp_path, "mini", b"x" * 10, "http://127.0.0.1:9/mini.pt")
    r = cli("--cache-dir", str(cache_dir), "--registry", str(registry), "load", "mini", "--device", "gpu")
    assert r.exit_code == 2 and not (cache_dir / "mini.pt.part").exists()


def test_missing_paths_and_unknown_names(tmp_path: Path, cli: Cli) -> None:
    r = cli("load", str(tmp_path / "nope.pt"))
    assert r.exit_code == 2 and "no such checkpoint file" in r.stderr
    r = cli("load", str(tmp_path))  # a directory is a model's (HF, CTranslate2) when it holds one
    assert r.exit_code == 4 and "a directory with no model in it" in r.stderr
    r = cli("load", "tinny")
    assert r.exit_code == 2 and "tiny" in r.stderr
    with pytest.raises(NotCachedError):
        whisperctl.load("tiny", cache_dir=tmp_path, offline=True)
    with pytest.raises(UsageError):
        whisperctl.load(tmp_path / "nope.pt")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_load(smallest: Path) -> None:
    loaded = whisperctl.load(smallest, device="cuda", dtype="fp16")
    report = loaded.report
    assert report.device.startswith("cuda") and all(p.device.startswith("cuda") for p in report.parts)
    weights = sum(p.numel() * 2 for p in loaded.model.parameters())
    assert report.peak_gpu_bytes is not None and report.peak_gpu_bytes <= 1.1 * weights + (64 << 20)
    reference = whisperctl.load_model(str(smallest), device="cpu")
    mel, tokens = _inputs(SMALLEST)
    with torch.no_grad():
        want = reference.logits(tokens, reference.embed_audio(mel))
        got = loaded.model.logits(tokens.cuda(), loaded.model.embed_audio(mel.cuda().half())).cpu()
    torch.testing.assert_close(got, want, atol=0.05 * float(want.abs().max()), rtol=0)


# -- info on checkpoints ----------------------------------------------------------------------------


def test_info_on_a_path_reads_dims_and_tensors(tiny: Path, cli: Cli) -> None:
    r = cli("info", str(tiny))
    assert r.exit_code == 0, r.stderr
    assert "n_text_layer=4" in r.stdout and "167 (167 float16)" in r.stdout
    assert "37,184,640 total" in r.stdout and "not checked" in r.stdout
    r = cli("info", str(tiny), "--verify", "--json")
    data = json.loads(r.stdout)
    assert data["sha256"] == sha256_hex(tiny.read_bytes()) and data["matches"] == []
    assert data["dims"] == TINY.as_dict() and data["tensors"] == 167 and data["dtypes"] == {"float16": 167}
    assert data["problems"] == [] and data["size_bytes"] == tiny.stat().st_size


def test_info_on_a_cached_name_flags_dims_that_differ(smallest: Path, cache_dir: Path, cli: Cli) -> None:
    spec = Registry().get("tiny")
    (cache_dir / spec.filename).write_bytes(smallest.read_bytes())
    r = cli("--cache-dir", str(cache_dir), "info", "tiny")
    assert r.exit_code == 0  # the registry's facts are shown; the file's problems flagged
    assert "dims differ from the registry's" in r.stdout and "n_audio_state=64 (registry 384)" in r.stdout
    r = cli("--cache-dir", str(cache_dir), "info", "tiny", "--json")
    data = json.loads(r.stdout)
    assert data["name"] == "tiny" and data["status"] == "present"
    assert data["checkpoint"]["dims"] == SMALLEST.as_dict() and data["checkpoint"]["problems"]
    r = cli("--cache-dir", str(cache_dir), "info", "base", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["checkpoint"] is None


def test_info_verify_on_a_name_hashes_as_verify_does(
    smallest: Path, cache_dir: Path, tmp_path: Path, cli: Cli
) -> None:
    data = smallest.read_bytes()
    registry = _register(tmp_path, "mini", data, "http://127.0.0.1:9/mini.pt")
    args = ["--cache-dir", str(cache_dir), "--registry", str(registry)]
    (cache_dir / "mini.pt").write_bytes(data)
    r = cli(*args, "info", "mini", "--verify")
    assert r.exit_code == 0, r.stderr
    assert f"sha256 measured  {sha256_hex(data)} (matches the registry)" in r.stdout
    r = cli(*args, "info", "mini", "--json")  # the stamp recorded it: no --verify needed any more
    assert json.loads(r.stdout)["status"] == "verified"
    other = data[:-1] + bytes([data[-1] ^ 1])
    (cache_dir / "mini.pt").write_bytes(other)
    r = cli(*args, "info", "mini", "--verify", "--json")
    found = json.loads(r.stdout)
    assert found["status"] == "corrupt" and found["checkpoint"]["sha256"] == sha256_hex(other)
    r = cli(*args, "info", "mini", "--verify")
    assert "(not the registry's)" in r.stdout


def test_info_reads_no_weights_and_imports_no_torch(tiny: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from whisperctl.cli.app import app
        try:
            app(["info", {str(tiny)!r}], prog_name="whisperctl")
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        assert "torch" not in sys.modules, "info imported torch"
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "167 (167 float16)" in result.stdout


# -- hostile and broken files -------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused_and_never_runs(tmp_path: Path, cli: Cli) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    sd = make_state_dict(SMALLEST)
    torch.save({"dims": SMALLEST.as_dict(), "model_state_dict": sd, "extra": _Payload(marker)}, path)
    for args in (["load", str(path)], ["info", str(path)], ["load", str(path), "--in-memory"]):
        r = cli(*args)
        assert r.exit_code == 4, (args, r.stderr)
        assert "refused" in r.stderr
        assert "posix.system" in r.stderr or "os.system" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    # PyTorch's own weights-only loader, the second line of defence, refuses it too.
    from whisperctl.models.formats.weights import torch_load

    with pytest.raises(IntegrityError, match="refused by PyTorch"):
        torch_load(path, in_memory=False)
    assert not marker.exists()


def _rewrite_zip(src: Path, dst: Path, *, compress: str | None = None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            method = (
                zipfile.ZIP_DEFLATED if compress and info.filename.endswith(compress) else zipfile.ZIP_STORED
            )
            zout.writestr(info.filename, zin.read(info), compress_type=method)
    return dst


def _absurd(tmp_path: Path) -> Path:
    # About 10^12 parameters: 2 + 3 layers of 12 n^2 each, n = 2^17.
    dims = {**SMALLEST.as_dict(), "n_text_state": 1 << 17, "n_audio_state": 1 << 17}
    path = tmp_path / "absurd.pt"
    torch.save({"dims": dims, "model_state_dict": make_state_dict(SMALLEST)}, path)
    return path


def _cases(smallest: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(smallest.read_bytes()[: smallest.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    legacy = tmp_path / "legacy.pt"
    torch.save({"dims": SMALLEST.as_dict()}, legacy, _use_new_zipfile_serialization=False)
    sd = make_state_dict(SMALLEST)
    shapes = dict(sd)
    del shapes["decoder.ln.bias"]
    shapes["encoder.extra"] = torch.zeros(2, dtype=torch.float16)
    shapes["decoder.token_embedding.weight"] = torch.zeros(10, 64, dtype=torch.float16)
    ints = {k: (v.to(torch.int32) if "conv1" in k else v) for k, v in sd.items()}
    cases = {
        "truncated zip": (truncated, "truncated"),
        "not a zip": (text, "not a PyTorch zip checkpoint"),
        "legacy format": (legacy, "not a PyTorch zip checkpoint"),
        "compressed entry": (_rewrite_zip(smallest, tmp_path / "bomb.pt", compress="data.pkl"), "compressed"),
        "absurd dims": (_absurd(tmp_path), "parameters"),
        "stride-0 views": (tmp_path / "views.pt", "parameters"),
        "wrong keys": (tmp_path / "keys.pt", "1 missing: decoder.ln.bias"),
        "int tensors": (tmp_path / "ints.pt", "not floating point: encoder.conv1.weight (int32)"),
        "no dims": (tmp_path / "nodims.pt", "not 'dims' and 'model_state_dict'"),
        "float dims": (tmp_path / "floatdims.pt", "not positive integers: n_mels=80.0"),
        "non-tensor": (tmp_path / "nontensor.pt", "not tensors: extra (str)"),
        "huge mask": (tmp_path / "mask.pt", "causal mask"),
    }
    torch.save({"dims": SMALLEST.as_dict(), "model_state_dict": shapes}, tmp_path / "keys.pt")
    torch.save({"dims": SMALLEST.as_dict(), "model_state_dict": ints}, tmp_path / "ints.pt")
    # Every shape right, but each tensor a view of one stored element: a tiny file that would take the
    # memory of the full model once converted.
    views = {k: torch.zeros(1, dtype=torch.float16).expand(v.shape) for k, v in sd.items()}
    torch.save({"dims": SMALLEST.as_dict(), "model_state_dict": views}, tmp_path / "views.pt")
    torch.save({"model_state_dict": sd}, tmp_path / "nodims.pt")
    torch.save(
        {"dims": {**SMALLEST.as_dict(), "n_mels": 80.0}, "model_state_dict": sd}, tmp_path / "floatdims.pt"
    )
    torch.save(
        {"dims": SMALLEST.as_dict(), "model_state_dict": {**sd, "extra": "x"}}, tmp_path / "nontensor.pt"
    )
    # A text context of 40,000 with 4-wide states: few weights, a 6.4 GB causal mask.
    mask_dims = ModelDimensions(80, 8, 4, 1, 1, 8, 40_000, 4, 1, 1)
    torch.save(
        {"dims": mask_dims.as_dict(), "model_state_dict": make_state_dict(mask_dims)}, tmp_path / "mask.pt"
    )
    return cases


CASES = [
    "truncated zip",
    "not a zip",
    "legacy format",
    "compressed entry",
    "absurd dims",
    "stride-0 views",
    "wrong keys",
    "int tensors",
    "no dims",
    "float dims",
    "non-tensor",
    "huge mask",
]


@pytest.mark.parametrize("case", CASES)
def test_broken_checkpoints_exit_4_with_one_line(smallest: Path, tmp_path: Path, cli: Cli, case: str) -> None:
    path, message = _cases(smallest, tmp_path)[case]
    r = cli("load", str(path))
    assert r.exit_code == 4, r.stderr
    assert message in r.stderr and str(path) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    if case != "huge mask":  # (the mask is the loader's concern: info allocates nothing)
        assert cli("info", str(path)).exit_code == 4


def test_all_key_problems_are_reported_together(smallest: Path, tmp_path: Path) -> None:
    path, _ = _cases(smallest, tmp_path)["wrong keys"]
    with pytest.raises(IntegrityError) as exc:
        whisperctl.load(path)
    message = str(exc.value)
    assert "1 missing: decoder.ln.bias" in message
    assert "1 unexpected: encoder.extra" in message
    assert "1 wrong shape: decoder.token_embedding.weight [10, 64] (expected [51865, 64])" in message


def test_absurd_dims_are_refused_before_allocating(smallest: Path, tmp_path: Path) -> None:
    """10^12 parameters: refused from the pickle alone, in a process that could never allocate them."""
    path = _absurd(tmp_path)
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        import whisperctl
        from whisperctl.errors import IntegrityError
        try:
            whisperctl.load({str(path)!r})
        except IntegrityError as exc:
            print(exc)
            sys.exit(4)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 4, result.stderr
    assert "refused" in result.stdout and "parameters" in result.stdout


def test_checkpoint_reader_matches_torch(tiny: Path) -> None:
    ckpt = read_checkpoint(tiny)
    sd = torch.load(tiny, weights_only=True, mmap=True)["model_state_dict"]
    assert {k: (t.shape, t.dtype) for k, t in ckpt.tensors.items()} == {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()
    }
    assert ckpt.dims == TINY and ckpt.tensor_bytes == sum(v.numel() * 2 for v in sd.values())


def test_a_pickle_of_plain_data_is_not_a_checkpoint(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    r = cli("info", str(path))
    assert r.exit_code == 4 and "not a Whisper checkpoint: it holds list" in r.stderr
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"dims": {}}))
    r = cli("load", str(raw))
    assert r.exit_code == 4 and "not a PyTorch zip checkpoint" in r.stderr
