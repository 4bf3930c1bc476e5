"""The built-in offline demo: `make demo`.

1. Generates a checkpoint in the official format ({"dims", "model_state_dict"}, fp16) with the official
   `tiny` dims and random weights, so its SHA-256 is genuine.
2. Serves it from a local HTTP server on 127.0.0.1 in the mirror layout `<base>/<sha256>/<file>`, and writes a
   user-registry entry for it.
3. Runs the real CLI: list, info, path (not cached yet: exit 5), download (progress bars), download again
   (cached: no network), verify, path, and the JSON forms.
4. Fleets: exports the cache as a mirror tree (`<sha256>/<file>` + SHA256SUMS), stops the server, and fills a
   second cache from that tree with a manifest, offline; then du and cache-key.
5. Formats: converts the cached model to Hugging Face, CTranslate2 and ggml, reads each back with `info`,
   loads the Hugging Face directory, and converts the ggml file back to a `.pt`.

Nothing leaves the machine. Everything lives in .demo/ (removed by `make clean`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
NAME = "demo-tiny"
WHISPERCTL = str(Path(sys.executable).parent / "whisperctl")


class RangeHandler(SimpleHTTPRequestHandler):
    """A static file server that also answers single byte ranges, as a CDN does."""

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        path = Path(self.translate_path(self.path))
        spec = self.headers.get("Range", "")
        if not path.is_file() or not spec.startswith("bytes="):
            return super().send_head()
        size = path.stat().st_size
        first, _, last = spec[6:].partition("-")
        start = int(first) if first else size - int(last)
        end = min(size - 1, int(last)) if first and last else size - 1
        f = path.open("rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.range_remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):  # type: ignore[no-untyped-def]
        remaining = getattr(self, "range_remaining", None)
        while remaining is None or remaining > 0:
            chunk = source.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            try:
                outputfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client took what it asked for and closed: normal for an open-ended range
            if remaining is not None:
                remaining -= len(chunk)


def make_checkpoint(path: Path) -> str:
    import torch

    from whisperctl.models.registry import Registry
    from whisperctl.models.transformer import Whisper

    dims = Registry().get("tiny").dims
    assert dims is not None
    torch.manual_seed(0)
    model = Whisper(dims)
    state = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"dims": dims.as_dict(), "model_state_dict": state}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args: str, expect: int = 0) -> None:
    print(f"\n$ whisperctl {shlex.join(args)}", flush=True)
    code = subprocess.call([WHISPERCTL, *args], env=ENV)
    if code != expect:
        sys.exit(f"demo: `whisperctl {shlex.join(args)}` exited {code}, expected {expect}")
    if code:
        print(f"(exit {code}, as expected)", flush=True)


ENV = dict(os.environ)


def main() -> None:
    WORK.mkdir(exist_ok=True)
    source = WORK / "source" / f"{NAME}.pt"
    source.parent.mkdir(exist_ok=True)
    print(f"demo: generating {source.name} (official tiny dims, random fp16 weights) ...", flush=True)
    digest = make_checkpoint(source)
    mirror = WORK / "mirror"
    (mirror / digest).mkdir(parents=True, exist_ok=True)
    served = mirror / digest / source.name
    served.unlink(missing_ok=True)
    os.link(source, served)

    handler = lambda *a, **kw: RangeHandler(*a, directory=str(mirror), **kw)  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{digest}/{source.name}"
    registry = WORK / "models.toml"
    registry.write_text(
        f'[models.{NAME}]\nurl = "{url}"\nsha256 = "{digest}"\nsize = {source.stat().st_size}\n'
        "alignment_heads = [[2, 2], [3, 0], [3, 2], [3, 3], [3, 4], [3, 5]]\n"
    )
    cache = WORK / "cache"
    for leftover in cache.glob("*"):
        if leftover.is_file():
            leftover.unlink()
    ENV.update(WHISPERCTL_CACHE_DIR=str(cache), WHISPERCTL_REGISTRY=str(registry))
    print(f"demo: serving it at {url}\ndemo: cache {cache}, registry {registry}", flush=True)
    try:
        run("list")
        run("info", "tiny")
        run("info", NAME)
        run("path", NAME, expect=5)
        run("download", NAME)
        run("download", NAME, "--json")
        run("verify")
        run("path", NAME)
        run("list", "--cached", "--json")
        run("info", NAME)  # now with the checkpoint's own dims and tensors, read without loading it
        run("load", NAME)  # auto device: CUDA, then MPS, then the CPU
    finally:
        server.shutdown()
    fleet()
    formats()
    print("\ndemo: done. Try it yourself:")
    print(f"  export WHISPERCTL_CACHE_DIR={cache} WHISPERCTL_REGISTRY={registry}")
    print(f"  {WHISPERCTL} list")


def fleet() -> None:
    """Export the demo model as a mirror tree, then feed a second cache from it with no network."""
    tree, second, manifest = WORK / "export", WORK / "cache2", WORK / "models.txt"
    for leftover in second.glob("*"):
        if leftover.is_file():
            leftover.unlink()
    manifest.write_text(f"# what every node needs\n{NAME}\n")
    print("\ndemo: the server is stopped; a second cache is filled from an exported tree", flush=True)
    run("export", str(tree), NAME)
    run("freeze")
    run("--cache-dir", str(second), "download", "-r", str(manifest), "--mirror", str(tree), "--offline")
    run("--cache-dir", str(second), "du")
    run("cache-key", "-r", str(manifest))


def formats() -> None:
    """The cached model in every format whisperctl writes, read back by whisperctl itself."""
    out = WORK / "formats"
    out.mkdir(exist_ok=True)
    print("\ndemo: the model in every format (the runtimes' checks: tests/test_formats_*.py)", flush=True)
    for fmt, target in (("hf", out / "hf"), ("ct2", out / "ct2"), ("ggml", out / "model.bin")):
        run("convert", NAME, str(target), "--to", fmt, "--force")
        run("info", str(target))
    run("load", str(out / "hf"))
    run("convert", str(out / "model.bin"), str(out / "back.pt"), "--to", "openai", "--force")


if __name__ == "__main__":
    main()
