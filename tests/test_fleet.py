"""Fleets and CI: manifests, freeze, export to a mirror tree, rm, prune, du, cache keys, shared caches."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from whisperctl import api
from whisperctl.api.fleet import parse_manifest, read_manifest
from whisperctl.models.registry import ModelSpec, load_registry
from whisperctl.store.cache import Cache

from .helpers import Cli, Result, file_sha256, sha256_hex
from .httpserver import HTTPServer

KiB = 1024
MiB = 1024 * KiB
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens


@dataclass(frozen=True)
class Blob:
    """A registry model made of random bytes, so its digest is genuine."""

    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return sha256_hex(self.data)

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


def make_blobs(*sizes: int) -> list[Blob]:
    return [Blob(f"m{i}", os.urandom(size)) for i, size in enumerate(sizes)]


def write_registry(path: Path, blobs: list[Blob], url: str = UNREACHABLE) -> Path:
    path.write_text(
        "".join(
            f'[models.{b.name}]\nurl = "{url}/{b.filename}"\nsha256 = "{b.sha256}"\nsize = {len(b.data)}\n\n'
            for b in blobs
        ),
        "utf-8",
    )
    return path


def whisperctl(cache: Path, registry: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "whisperctl", "--cache-dir", str(cache), "--registry", str(registry), *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a whisperctl child: this source tree first, no proxies, no colours."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), NO_COLOR="1", NO_PROXY="127.0.0.1", **extra)
    return env


# -- shared caches -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shared_cache_without_working_locks_is_never_corrupted(tmp_path: Path, server: HTTPServer) -> None:
    # A lock that cannot be taken at all (here a directory where the lock file goes; on some network
    # filesystems flock fails): every process downloads at once, and the digest check alone must keep the
    # cache correct. Before the fix, one process renamed another's unfinished partial file into place.
    (blob,) = make_blobs(3 * MiB)
    server.add(f"/files/{blob.filename}", blob.data, rate_limit=1 * MiB)
    registry = write_registry(tmp_path / "models.toml", [blob], server.url("/files"))
    cache = tmp_path / "shared"
    (cache / ".whisperctl" / "locks" / f"{blob.filename}.lock").mkdir(parents=True)
    procs = [
        subprocess.Popen(
            whisperctl(cache, registry, "download", blob.name),
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert all("going on without the lock" in err for err in errors), errors
    assert len(server.requests_for(f"/files/{blob.filename}", "GET")) == 4  # no lock: four downloads
    assert file_sha256(cache / blob.filename) == blob.sha256
    assert sorted(os.listdir(cache)) == [".whisperctl", blob.filename]  # no partial, no private copy left


def test_without_working_locks_a_verified_model_beside_leftovers_is_still_cached(
    tmp_path: Path, server: HTTPServer
) -> None:
    # Leftovers are removed only under the lock; where none can be taken they stay, but the good file is
    # served as it is, with no network (it was downloaded again before the fix).
    (blob,) = make_blobs(1 * MiB)
    server.add(f"/files/{blob.filename}", blob.data)
    registry = write_registry(tmp_path / "models.toml", [blob], server.url("/files"))
    cache = tmp_path / "shared"
    first = subprocess.run(whisperctl(cache, registry, "download", blob.name), env=child_env(), check=False)
    assert first.returncode == 0
    (cache / ".whisperctl" / "locks" / f"{blob.filename}.lock").unlink(missing_ok=True)
    (cache / ".whisperctl" / "locks" / f"{blob.filename}.lock").mkdir()
    (cache / f"{blob.filename}.part").write_bytes(b"x" * 100)
    (cache / f"{blob.filename}.part.json").write_text("{}")
    gets = len(server.requests_for(f"/files/{blob.filename}", "GET"))
    again = subprocess.run(
        whisperctl(cache, registry, "download", "--json", blob.name),
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["status"] == "cached"
    assert len(server.requests_for(f"/files/{blob.filename}", "GET")) == gets
    assert file_sha256(cache / blob.filename) == blob.sha256


# -- a lab: registry models made of random bytes, caches filled from a mirror tree ---------------------------
class Lab:
    def __init__(self, tmp_path: Path, *sizes: int) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_path
        self.blobs = make_blobs(*sizes)
        self.registry = write_registry(tmp_path / "models.toml", self.blobs)
        self.cache_dir = tmp_path / "cache"
        self.cache = Cache(self.cache_dir)
        self.source = tmp_path / "source-tree"  # an official-layout tree, as the CDN serves it
        for b in self.blobs:
            (self.source / b.sha256).mkdir(parents=True)
            (self.source / b.sha256 / b.filename).write_bytes(b.data)

    def cli(self, *args: str, cache: Path | None = None) -> Result:
        return Cli()("--cache-dir", str(cache or self.cache_dir), "--registry", str(self.registry), *args)

    def fill(self, *blobs: Blob, cache: Path | None = None) -> None:
        api.download(
            [b.name for b in blobs or self.blobs],
            cache_dir=cache or self.cache_dir,
            registry=self.registry,
            mirrors=[str(self.source)],
            offline=True,
        )

    def spec(self, blob: Blob) -> ModelSpec:
        return load_registry(self.registry).get(blob.name)

    def status(self, blob: Blob, cache: Path | None = None) -> str:
        return Cache(cache or self.cache_dir).entry(self.spec(blob)).status


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path, 64 * KiB, 96 * KiB, 128 * KiB)


# -- manifests and freeze ------------------------------------------------------------------------------------
def test_manifest_syntax_comments_aliases_and_order(tmp_path: Path) -> None:
    manifest = tmp_path / "models.txt"
    text = "\ufeff# models for the fleet\r\n\nsmall   # the default\n  large\n\nlarge-v3\ntiny.en#no space\n"
    manifest.write_text(text, "utf-8")  # a BOM and CRLF, as a Windows editor may save it
    specs = read_manifest(manifest)
    assert [s.name for s in specs] == ["small", "large-v3", "tiny.en"]  # `large` is `large-v3`: once


def test_manifest_with_bad_lines_fails_before_any_download_and_names_every_line(
    lab: Lab, server: HTTPServer
) -> None:
    for b in lab.blobs:
        server.add(f"/files/{b.filename}", b.data)
    write_registry(lab.registry, lab.blobs, server.url("/files"))
    manifest = lab.tmp / "models.txt"
    manifest.write_text("# fleet\nm0\n\nm1  # ok\ntinyy\nm2 m3\n", "utf-8")
    result = lab.cli("download", "-r", str(manifest))
    assert result.exit_code == 2
    assert f"{manifest}: line 5: unknown model 'tinyy' (did you mean 'tiny'" in result.stderr
    assert "line 6: 'm2 m3' is not one model name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line: what, where, and the fix
    assert server.requests == []  # nothing started
    assert not lab.cache_dir.exists() or not any(lab.cache_dir.glob("*.pt*"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read the manifest"), (b"# nothing\n\n", "names no model"), (b"\xff\xfe", "not UTF-8")],
)
def test_unusable_manifest_exits_2(lab: Lab, content: bytes | None, expected: str) -> None:
    manifest = lab.tmp / "models.txt"
    if content is not None:
        manifest.write_bytes(content)
    for command in ("download", "cache-key", "export"):
        args = [command, str(lab.tmp / "tree")] if command == "export" else [command]
        result = lab.cli(*args, "-r", str(manifest))
        assert result.exit_code == 2, (command, result.stderr)
        assert str(manifest) in result.stderr and expected in result.stderr


def test_download_from_a_manifest_then_freeze_round_trips(lab: Lab) -> None:
    manifest = lab.tmp / "models.txt"
    manifest.write_text("m0\nm2\n", "utf-8")
    result = lab.cli("download", "-r", str(manifest), "--mirror", str(lab.source), "--offline", "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["name"] for r in json.loads(result.stdout)] == ["m0", "m2"]

    frozen = lab.cli("freeze")
    assert frozen.exit_code == 0, frozen.stderr
    lines = [line for line in frozen.stdout.splitlines() if not line.startswith("#")]
    b0, b2 = lab.blobs[0], lab.blobs[2]
    assert lines == [
        f"m0  # sha256:{b0.sha256} {len(b0.data)} bytes",
        f"m2  # sha256:{b2.sha256} {len(b2.data)} bytes",
    ]
    assert [s.name for s in parse_manifest(frozen.stdout, load_registry(lab.registry))] == ["m0", "m2"]
    as_json = json.loads(lab.cli("freeze", "--json").stdout)
    assert [(m["name"], m["sha256"], m["size_bytes"]) for m in as_json] == [
        ("m0", b0.sha256, len(b0.data)),
        ("m2", b2.sha256, len(b2.data)),
    ]
    assert set(as_json[0]) == {"name", "filename", "sha256", "size_bytes", "path"}


def test_freeze_hashes_unstamped_files_and_leaves_out_corrupt_ones(lab: Lab) -> None:
    b0, b1, _ = lab.blobs
    lab.cache_dir.mkdir()
    (lab.cache_dir / b0.filename).write_bytes(b0.data)  # put there by another tool: never hashed
    (lab.cache_dir / b1.filename).write_bytes(b"not the model")
    result = lab.cli("freeze")
    assert result.exit_code == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines() if not line.startswith("#")] == ["m0"]
    assert "m1: left out, its file failed verification" in result.stderr
    assert lab.status(b0) == "verified" and lab.status(b1) == "corrupt"


# -- export --------------------------------------------------------------------------------------------------
def read_sums(tree: Path) -> dict[str, str]:
    return {
        path: digest
        for digest, path in (line.split("  ") for line in (tree / "SHA256SUMS").read_text().splitlines())
    }


def test_export_links_verified_files_into_the_official_layout_with_sha256sums(lab: Lab) -> None:
    b0, b1, _b2 = lab.blobs
    lab.fill()
    tree = lab.tmp / "usb" / "whisper"
    result = lab.cli("export", str(tree), "m0", "m1", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"root", "sums", "bytes_copied", "models"}
    assert [(m["name"], m["method"]) for m in report["models"]] == [("m0", "linked"), ("m1", "linked")]
    for b in (b0, b1):
        exported = tree / b.sha256 / b.filename
        assert exported.stat().st_ino == (lab.cache_dir / b.filename).stat().st_ino  # a hard link, no copy
        assert file_sha256(exported) == b.sha256
    assert read_sums(tree) == {f"{b.sha256}/{b.filename}": b.sha256 for b in (b0, b1)}
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=tree, check=True)

    # Filled model by model: earlier lines stay, files already there are verified and kept.
    again = json.loads(lab.cli("export", str(tree), "m2", "m0", "--json").stdout)
    assert [(m["name"], m["method"]) for m in again["models"]] == [("m2", "linked"), ("m0", "present")]
    assert set(read_sums(tree)) == {f"{b.sha256}/{b.filename}" for b in lab.blobs}
    assert sorted(p.name for p in tree.iterdir()) == sorted([*(b.sha256 for b in lab.blobs), "SHA256SUMS"])
    assert not list(tree.rglob("*.tmp"))


_OPENED: list[str] | None = None  # paths opened while a test listens (audit hooks cannot be removed)


def _record_opens(event: str, args: tuple[object, ...]) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


def test_export_links_a_stamped_file_without_reading_it(lab: Lab) -> None:
    global _OPENED
    (b0, *_) = lab.blobs
    lab.fill(b0)
    tree = lab.tmp / "tree"
    sys.addaudithook(_record_opens)
    _OPENED = []
    try:
        result = lab.cli("export", str(tree), "m0", "--json")
        opened, _OPENED = _OPENED, None
    finally:
        _OPENED = None
    assert result.exit_code == 0, result.stderr
    assert [m["method"] for m in json.loads(result.stdout)["models"]] == ["linked"]
    weights = [p for p in opened if f"/{b0.sha256}/" in p or Path(p).name == b0.filename]
    assert weights == []  # its stamp vouches for the inode that the link shares
    assert file_sha256(tree / b0.sha256 / b0.filename) == b0.sha256


def test_export_all_cached_and_from_a_manifest(lab: Lab) -> None:
    lab.fill(*lab.blobs[:2])
    result = lab.cli("export", str(lab.tmp / "a"), "--all-cached")
    assert result.exit_code == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["m0", "m1"]
    manifest = lab.tmp / "models.txt"
    manifest.write_text("m1\n", "utf-8")
    assert lab.cli("export", str(lab.tmp / "b"), "-r", str(manifest)).exit_code == 0
    assert set(read_sums(lab.tmp / "b")) == {f"{lab.blobs[1].sha256}/m1.pt"}
    empty = Lab(lab.tmp / "other", 1).cli("export", str(lab.tmp / "c"), "--all-cached")
    assert empty.exit_code == 5 and "no model in the cache" in empty.stderr


def test_export_copies_across_filesystems(lab: Lab) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == lab.tmp.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the temporary directory's")
    lab.fill()
    tree = Path(tempfile.mkdtemp(dir=shm, prefix="whisperctl-export-"))
    try:
        report = json.loads(lab.cli("export", str(tree), "--all-cached", "--json").stdout)
        assert {m["method"] for m in report["models"]} == {"copied"}
        assert report["bytes_copied"] == sum(len(b.data) for b in lab.blobs)
        for b in lab.blobs:
            assert file_sha256(tree / b.sha256 / b.filename) == b.sha256
    finally:
        shutil.rmtree(tree)


def test_export_refuses_what_is_not_cached_or_corrupt_before_writing(lab: Lab) -> None:
    b0, b1, _ = lab.blobs
    lab.fill(b0)
    tree = lab.tmp / "tree"
    missing = lab.cli("export", str(tree), "m0", "m1")
    assert missing.exit_code == 5 and "m1: not in the cache" in missing.stderr
    assert not tree.exists()  # checked before anything was written
    (lab.cache_dir / b1.filename).write_bytes(b"x" * len(b1.data))
    api.verify(["m1"], cache_dir=lab.cache_dir, registry=lab.registry)  # stamps it corrupt
    corrupt = lab.cli("export", str(tree), "m0", "m1")
    assert corrupt.exit_code == 4 and "whisperctl verify --repair m1" in corrupt.stderr
    assert not tree.exists()
    unknown = lab.cli("export", str(tree), "nope")
    assert unknown.exit_code == 2
    usage = lab.cli("export", str(tree))
    assert usage.exit_code == 2 and "--all-cached" in usage.stderr


def test_export_verifies_each_file_and_never_publishes_a_changed_one(lab: Lab) -> None:
    b0, b1, _ = lab.blobs
    lab.fill(b0, b1)
    cached = lab.cache_dir / b1.filename
    with open(cached, "r+b") as f:  # changed in place after it was verified: its stamp no longer matches
        f.seek(100)
        f.write(b"\x00" * 8)
    tree = lab.tmp / "tree"
    result = lab.cli("export", str(tree), "m0", "m1")
    assert result.exit_code == 4
    assert f"m1: {cached} has SHA-256" in result.stderr and "was not exported" in result.stderr
    assert not (tree / b1.sha256 / b1.filename).exists()
    assert not list(tree.rglob("*.tmp"))
    assert read_sums(tree) == {f"{b0.sha256}/{b0.filename}": b0.sha256}  # what did export is listed


# -- rm, prune, du -------------------------------------------------------------------------------------------
class LockHolder:
    """Another process that holds a model's lock (and says so in its owner note), as a download does."""

    def __init__(self, cache_dir: Path, filename: str) -> None:
        lock = cache_dir / ".whisperctl" / "locks" / f"{filename}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        code = (
            "import filelock, json, os, socket, sys\n"
            "lock = filelock.FileLock(sys.argv[1]); lock.acquire()\n"
            "open(sys.argv[1][:-5] + '.owner', 'w').write(json.dumps({'pid': os.getpid(), "
            "'host': socket.gethostname()}))\n"
            "print('held', flush=True); sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def __enter__(self) -> LockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def tree_of(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_rm_removes_file_partial_sidecar_stamp_and_lock_and_reports_bytes(lab: Lab) -> None:
    b0, b1, b2 = lab.blobs
    lab.fill(b0, b2)
    (lab.cache_dir / f"{b1.filename}.part").write_bytes(b"\0" * 5000)  # an unfinished download of m1
    (lab.cache_dir / f"{b1.filename}.part.json").write_text("{}")
    (lab.cache_dir / "notes.txt").write_text("mine")
    before = tree_of(lab.cache_dir)
    expected = sum((lab.cache_dir / p).stat().st_size for p in before if "m0.pt" in p or "m1.pt" in p)

    result = lab.cli("rm", "m0", "m1", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bytes_freed"] == expected
    assert [(m["name"], m["status"]) for m in report["models"]] == [("m0", "removed"), ("m1", "removed")]
    m0_files = {Path(f["path"]).name for f in report["models"][0]["files"]}
    assert {"m0.pt", "m0.pt.json"} <= m0_files  # the file and its stamp (and its lock, if any)
    assert tree_of(lab.cache_dir) == {p for p in before if "m0.pt" not in p and "m1.pt" not in p}
    assert lab.status(b2) == "verified"

    again = lab.cli("rm", "m0")
    assert again.exit_code == 0 and again.stdout.startswith("m0: nothing in the cache")
    assert json.loads(lab.cli("rm", "m0", "--json").stdout)["bytes_freed"] == 0


def test_rm_checks_every_name_first_and_removes_unknown_files_only_by_name(lab: Lab) -> None:
    lab.fill()
    (lab.cache_dir / "retired.pt").write_bytes(b"r" * 1000)  # a model since dropped from the registry
    (lab.cache_dir / "retired.pt.part").write_bytes(b"r" * 10)
    before = tree_of(lab.cache_dir)
    bad = lab.cli("rm", "m0", "nope")
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.stderr
    assert tree_of(lab.cache_dir) == before  # nothing removed
    result = lab.cli("rm", "retired", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["bytes_freed"] == 1010
    assert not (lab.cache_dir / "retired.pt").exists() and not (lab.cache_dir / "retired.pt.part").exists()


def test_rm_refuses_a_model_another_process_is_downloading(lab: Lab) -> None:
    lab.fill()
    with LockHolder(lab.cache_dir, "m0.pt") as holder:
        result = lab.cli("rm", "m1", "m0")  # m1 comes first, and stays too: all or nothing
        assert result.exit_code == 6
        assert (
            f"m0.pt: process {holder.proc.pid} on " in result.stderr and "is downloading it" in result.stderr
        )
        assert "nothing was removed" in result.stderr
        assert lab.status(lab.blobs[0]) == "verified" and lab.status(lab.blobs[1]) == "verified"


def test_prune_takes_only_stale_state_and_dry_run_says_the_same(lab: Lab) -> None:
    b0, _b1, _b2 = lab.blobs
    lab.fill(b0)
    root, state = lab.cache_dir, lab.cache_dir / ".whisperctl"
    # stale: a partial no process writes, a stamp whose file is gone, an unheld lock, an old temporary file
    (root / "m1.pt.part").write_bytes(b"\0" * 3000)
    (root / "m1.pt.part.json").write_text("{}")
    (state / "stamps" / "gone.pt.json").write_text("{}")
    (state / "locks").mkdir(exist_ok=True)
    (state / "locks" / "old.pt.lock").write_bytes(b"")
    (state / "locks" / "old.pt.owner").write_text('{"pid": 1, "host": "h"}')
    old_tmps = [state / "stamps" / ".m0.pt.json.0123456789ab.tmp", root / ".m1.pt.part.json.0123456789ab.tmp"]
    for old_tmp in old_tmps:  # a stamp's and a sidecar's, both written by atomic_write_text
        old_tmp.write_text("{}")
        os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    # kept: a fresh temporary file, a partial being written, unknown files, the model itself
    (state / "stamps" / ".m0.pt.json.ba9876543210.tmp").write_text("{}")
    (root / "m2.pt.part").write_bytes(b"\0" * 2000)
    for unknown in ("stray.bin", "other.pt.part", "notes/readme"):
        (root / unknown).parent.mkdir(exist_ok=True)
        (root / unknown).write_bytes(b"?")
    stale = {
        "m1.pt.part",
        "m1.pt.part.json",
        ".whisperctl/stamps/gone.pt.json",
        ".whisperctl/locks/old.pt.lock",
        ".whisperctl/locks/old.pt.owner",
        ".whisperctl/stamps/.m0.pt.json.0123456789ab.tmp",
        ".m1.pt.part.json.0123456789ab.tmp",
        ".whisperctl/locks/m0.pt.lock",
    }  # fmt: skip  (m0's lock: its download is over)
    freed = sum((root / p).stat().st_size for p in stale)

    with LockHolder(root, "m2.pt"):
        before = tree_of(root)
        dry = lab.cli("prune", "--dry-run", "--json")
        assert dry.exit_code == 0, dry.stderr
        assert tree_of(root) == before
        result = lab.cli("prune", "--json")
        assert result.exit_code == 0, result.stderr
    dry_report, report = json.loads(dry.stdout), json.loads(result.stdout)
    assert dry_report["dry_run"] and not report["dry_run"]
    for r in (dry_report, report):
        assert {str(Path(i["path"]).relative_to(root)) for i in r["removed"]} == stale
        assert r["bytes_freed"] == freed
        assert r["in_use"] == [str(root / "m2.pt.part")]
        assert {str(Path(p).relative_to(root)) for p in r["unknown"]} == {
            "notes",
            "other.pt.part",
            "stray.bin",
        }
    assert tree_of(root) == before - stale
    assert lab.status(b0) == "verified"
    # Its writer gone, m2's partial file is stale in turn, with its lock.
    last = json.loads(lab.cli("prune", "--json").stdout)
    assert {str(Path(i["path"]).relative_to(root)) for i in last["removed"]} == {
        "m2.pt.part",
        ".whisperctl/locks/m2.pt.lock",
        ".whisperctl/locks/m2.pt.owner",
    }


def test_du_counts_models_partials_state_and_unknown_files(lab: Lab) -> None:
    b0, b1, _ = lab.blobs
    lab.fill(b0)
    (lab.cache_dir / "m1.pt.part").write_bytes(b"\0" * len(b1.data))
    (lab.cache_dir / "m1.pt.part.json").write_text("{}")
    (lab.cache_dir / "stray.bin").write_bytes(b"x" * 10)
    result = lab.cli("du", "--json")
    assert result.exit_code == 0, result.stderr
    usage = json.loads(result.stdout)
    models = {m["name"]: m for m in usage["models"]}
    assert set(models) == {"m0", "m1"}
    assert (models["m0"]["status"], models["m0"]["file_bytes"], models["m0"]["partial_bytes"]) == (
        "verified",
        len(b0.data),
        0,
    )
    assert (models["m1"]["status"], models["m1"]["partial_bytes"]) == ("partial", len(b1.data) + 2)
    assert usage["unknown"] == [{"path": str(lab.cache_dir / "stray.bin"), "size_bytes": 10}]
    on_disk = sum(p.stat().st_size for p in lab.cache_dir.rglob("*") if p.is_file())
    assert usage["total_bytes"] == on_disk
    table = lab.cli("du")
    assert (
        table.exit_code == 0
        and "m1" in table.stdout
        and "partial" in table.stdout
        and "total" in table.stdout
    )


# -- cache keys ----------------------------------------------------------------------------------------------
def documented_key(models: dict[str, str]) -> str:
    """The README's formula: whisper-<layout>-<16 hex of sha256 over the sorted "name sha256" lines>."""
    text = "".join(f"{name} {digest}\n" for name, digest in sorted(models.items()))
    return f"whisper-1-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def test_cache_key_is_stable_across_runs_and_machines(lab: Lab, tmp_path: Path) -> None:
    official = load_registry(None)
    expected = documented_key({"m0": lab.blobs[0].sha256, "large-v3": official.get("large-v3").sha256})
    keys = set()
    for machine in ("a", "b"):  # another HOME, cache, working directory, registry path and hash seed
        home = tmp_path / machine
        home.mkdir()
        registry = shutil.copy(lab.registry, home / "models.toml")
        argv = [sys.executable, "-m", "whisperctl", "--registry", str(registry), "cache-key", "large", "m0"]
        env = child_env(
            HOME=str(home), WHISPERCTL_CACHE_DIR=str(home / "cache"), PYTHONHASHSEED=str(ord(machine))
        )
        out = subprocess.run(argv, cwd=home, env=env, check=True, capture_output=True, text=True).stdout
        keys.add(out.strip())
    assert keys == {expected}
    # Order, aliases and repeats do not matter; a manifest gives the same key as its names.
    assert lab.cli("cache-key", "m0", "large-v3", "m0").stdout.strip() == expected
    manifest = lab.tmp / "models.txt"
    manifest.write_text("large  # alias of large-v3\nm0\n", "utf-8")
    as_json = json.loads(lab.cli("cache-key", "-r", str(manifest), "--json").stdout)
    assert as_json == {
        "key": expected,
        "layout": 1,
        "models": [
            {"name": "large-v3", "sha256": official.get("large-v3").sha256},
            {"name": "m0", "sha256": lab.blobs[0].sha256},
        ],
    }


def test_cache_key_changes_when_a_digest_changes(lab: Lab) -> None:
    before = lab.cli("cache-key", "m0", "m1").stdout.strip()
    assert lab.cli("cache-key", "m0").stdout.strip() != before  # another set of models
    blobs = [lab.blobs[0], Blob("m1", b"a new release of m1"), lab.blobs[2]]
    write_registry(lab.registry, blobs)
    after = lab.cli("cache-key", "m0", "m1").stdout.strip()
    assert after != before
    assert after == documented_key({"m0": blobs[0].sha256, "m1": blobs[1].sha256})
    unknown = lab.cli("cache-key", "m0", "nope")
    assert unknown.exit_code == 2 and "unknown model 'nope'" in unknown.stderr
    assert lab.cli("cache-key").exit_code == 2


# -- shared caches: permissions ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o002, 0o022], ids=["umask002", "umask022"])
def test_new_files_and_directories_respect_the_umask(tmp_path: Path, server: HTTPServer, umask: int) -> None:
    (blob,) = make_blobs(2 * MiB)
    server.add(f"/files/{blob.filename}", blob.data, rate_limit=2 * MiB)  # a second: time to see the .part
    registry = write_registry(tmp_path / "models.toml", [blob], server.url("/files"))
    cache = tmp_path / "shared"
    cache.mkdir()
    import grp

    group = os.getgid()
    if umask == 0o002:  # the README's recipe: a group of its own, the setgid bit, umask 002
        others = [g.gr_gid for g in grp.getgrall() if g.gr_gid != group]
        if os.geteuid() == 0 and others:
            group = others[0]
            os.chown(cache, -1, group)
        cache.chmod(0o2775)
    command = shlex.join(whisperctl(cache, registry, "download", blob.name))
    proc = subprocess.Popen(["sh", "-c", f"umask {umask:03o} && exec {command}"], env=child_env(),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    part = cache / f"{blob.filename}.part"
    deadline = time.monotonic() + 20
    while not part.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    part_mode = stat.S_IMODE(part.stat().st_mode)
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    state = cache / ".whisperctl"
    files = [
        cache / blob.filename,
        state / "stamps" / f"{blob.filename}.json",
        state / "locks" / f"{blob.filename}.lock",
    ]
    assert part_mode == file_mode
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        str(p): oct(file_mode) for p in files
    }
    for d in (state, state / "stamps", state / "locks"):
        assert stat.S_IMODE(d.stat().st_mode) & 0o777 == dir_mode
        if umask == 0o002:  # setgid is inherited, so is the group
            assert d.stat().st_mode & stat.S_ISGID and d.stat().st_gid == group
    if umask == 0o002:
        assert {p.stat().st_gid for p in files} == {group}


# -- an air-gapped fleet: export, a directory mirror, 8 private caches and 4 processes on a shared one ------
def no_network_prefix() -> list[str]:
    """A command prefix that runs a process in a network namespace of its own (no interface but a downed
    loopback) where this machine allows it; else none, and --offline alone keeps clients off the network."""
    for prefix in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
        if shutil.which(prefix[0]):
            probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
            if probe.returncode == 0:
                return prefix
    return []


def run_fleet(
    argv_for: Callable[[Path], list[str]], caches: list[Path], env: dict[str, str], timeout: float = 90
) -> list[str]:
    """Start one client per cache at once; wait for all; their stderr. Every client must exit 0."""
    procs = [
        subprocess.Popen(
            argv_for(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        for cache in caches
    ]
    errors = [p.communicate(timeout=timeout)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), errors
    return errors


def assert_fleet_verified(blobs: list[Blob], registry: Path, caches: list[Path]) -> None:
    reg = load_registry(registry)
    for cache in set(caches):
        for b in blobs:
            assert Cache(cache).entry(reg.get(b.name)).status == "verified"
            assert file_sha256(cache / b.filename) == b.sha256
        # Each file once, under its final name: no partial file, no sidecar, no private copy left behind.
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            [".whisperctl", *(b.filename for b in blobs)]
        )


def assert_one_download_each(blobs: list[Blob], shared_errors: list[str]) -> None:
    for b in blobs:
        downloaded = [err for err in shared_errors if f"{b.name}: downloaded" in err]
        cached = [err for err in shared_errors if f"{b.name}: cached" in err]
        assert (len(downloaded), len(cached)) == (1, len(shared_errors) - 1), shared_errors


@pytest.mark.slow
def test_air_gapped_fleet_from_an_exported_directory(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", 1 * MiB, 2 * MiB, 512 * KiB)  # the origin is unreachable
    blobs = lab.blobs
    lab.fill()  # the connected machine
    usb = tmp_path / "usb"
    assert lab.cli("export", str(usb), "--all-cached").exit_code == 0
    manifest = tmp_path / "models.txt"
    manifest.write_text(lab.cli("freeze").stdout, "utf-8")

    isolate = no_network_prefix()
    private = [tmp_path / f"node{i}" for i in range(8)]
    shared = [tmp_path / "nfs"] * 4
    env = child_env(WHISPERCTL_MIRROR=str(usb), WHISPERCTL_OFFLINE="1")
    errors = run_fleet(lambda c: [*isolate, *whisperctl(c, lab.registry, "download", "-r", str(manifest))],
                       private + shared, env)  # fmt: skip
    assert_fleet_verified(blobs, lab.registry, private + shared)
    assert all(f"from {usb}/" in err for err in errors[:8])
    assert_one_download_each(blobs, errors[8:])
