"""Abuse: hostile names and registry entries, a booby-trapped cache, hostile responses.

Each case asserts the same things: a documented exit code, one ``error:`` line on stderr that names the
thing and no traceback, and nothing written where it must not be (outside the cache, through a symlink, or
anything at all for input that is refused). Checkpoint abuse is tested with the loader.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from whisperctl import api
from whisperctl.fetch.transfer import TransferOptions

from .helpers import Cli, Result, sha256_hex
from .httpserver import HTTPServer, TLSUnavailableError

KiB = 1024
MiB = 1024 * KiB
GOOD_SHA = "a" * 64


def tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and symlink under ``root`` with its size and content digest (or link target)."""
    found: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            if path.is_symlink():
                found[str(path)] = (0, "-> " + os.readlink(path))
            else:
                found[str(path)] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        found[dirpath + os.sep] = (0, "dir")
    return found


def one_error_line(result: Result, *names: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert all(n in errors[0] for n in names), (names, errors[0])
    return errors[0]


# -- names and registry entries ------------------------------------------------------------------------------
BAD_NAMES = {
    "parent": "../x",
    "parent-inside": "a/../../x",
    "absolute": "/tmp/x",
    "slash": "a/b",
    "nul": "a\x00b",
    "newline": "a\nb",
    "dot-first": ".hidden",
    "too-long": "x" * 65,
    "very-long": "y" * 20_000,
}


def _toml_key(name: str) -> str:
    return (
        '"'
        + name.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\u0000").replace("\n", "\\n")
        + '"'
    )


def _entry(name: str = "mine", url: str = "https://example.com/mine.pt", sha256: str = GOOD_SHA) -> str:
    return f'[models.{_toml_key(name)}]\nurl = "{url}"\nsha256 = "{sha256}"\n'


BAD_ENTRIES = {
    **{f"name-{k}": _entry(name=v) for k, v in BAD_NAMES.items()},
    "url-file": _entry(url="file:///etc/passwd"),
    "url-ftp": _entry(url="ftp://example.com/mine.pt"),
    "url-javascript": _entry(url="javascript:alert(1)"),
    "url-data": _entry(url="data:application/octet-stream;base64,AAAA"),
    "url-no-scheme": _entry(url="//example.com/mine.pt"),
    "url-no-host": _entry(url="http:///mine.pt"),
    "url-newline": _entry(url="https://example.com/a\\nb.pt"),
    "url-bad-ipv6": _entry(url="http://[::1/mine.pt"),
    "sha-short": _entry(sha256="a" * 63),
    "sha-long": _entry(sha256="a" * 65),
    "sha-not-hex": _entry(sha256="g" * 64),
    "sha-empty": _entry(sha256=""),
    "sha-md5-length": _entry(sha256="d41d8cd98f00b204e9800998ecf8427e"),
}


@pytest.fixture
def world(tmp_path: Path, isolated_env: Path) -> Callable[[], None]:
    """Snapshots tmp_path and HOME; the returned check asserts nothing in them changed."""
    before = {**tree(tmp_path), **tree(isolated_env)}

    def unchanged() -> None:
        assert {**tree(tmp_path), **tree(isolated_env)} == before

    return unchanged


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
@pytest.mark.parametrize("command", [["list"], ["download", "mine"], ["verify"], ["path", "mine"]])
def test_bad_registry_entry_is_refused_and_nothing_is_written(
    case: str, command: list[str], tmp_path: Path, cli: Cli
) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(BAD_ENTRIES[case], "utf-8")
    before = tree(tmp_path)
    result = cli("--cache-dir", str(tmp_path / "cache"), "--registry", str(registry), *command)
    assert result.exit_code == 2, result.stderr
    line = one_error_line(result, str(registry))
    assert len(line) < 600  # a 20,000-character name is not echoed back in full
    assert tree(tmp_path) == before
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
@pytest.mark.parametrize(
    "command", [["info"], ["path"], ["download"], ["verify"], ["rm"], ["load", "--device", "cpu"]]
)
def test_bad_model_name_argument_is_refused_and_nothing_is_written(
    name: str, command: list[str], tmp_path: Path, cli: Cli, world: Callable[[], None]
) -> None:
    cache = tmp_path / "cache"
    result = cli("--cache-dir", str(cache), *command, name)
    assert result.exit_code == 2, result.stderr
    # `info` and `load` also take a checkpoint path: a name with a slash is refused as a missing file.
    line = one_error_line(result)
    assert "unknown model" in line or "checkpoint" in line
    assert len(line) < 600
    assert not cache.exists()
    world()


def test_bad_names_through_a_real_process(tmp_path: Path, world: Callable[[], None]) -> None:
    """The same through argv, where a name cannot hold a NUL but can hold a newline or 100,000 bytes."""
    for name in ("../x", "/etc/passwd", "a\nb", "z" * 100_000):
        result = subprocess.run(
            [sys.executable, "-m", "whisperctl", "--cache-dir", str(tmp_path / "cache"), "download", name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        one_error_line(Result(result.returncode, result.stdout, result.stderr), "unknown model")
    assert not (tmp_path / "cache").exists()
    world()


@pytest.mark.parametrize("mirror", ["http://[::1", "ftp://127.0.0.1/", "/no/such/dir"])
def test_bad_mirror_is_refused_and_nothing_is_written(
    mirror: str, tmp_path: Path, cli: Cli, world: Callable[[], None]
) -> None:
    result = cli("--cache-dir", str(tmp_path / "cache"), "download", "--mirror", mirror, "tiny")
    assert result.exit_code == 2, result.stderr
    one_error_line(result, "mirror")
    assert not (tmp_path / "cache").exists()
    world()


# -- a booby-trapped cache -----------------------------------------------------------------------------------
class Setup:
    """A model served by the test server and registered, a cache, and a file outside it that must stay."""

    def __init__(self, server: HTTPServer, tmp_path: Path, size: int = 256 * KiB, **faults: object) -> None:
        self.server = server
        self.data = os.urandom(size)
        server.add("/m.pt", self.data, **faults)
        self.registry = tmp_path / "models.toml"
        self.registry.write_text(
            f'[models.m]\nurl = "{server.url("/m.pt")}"\nsha256 = "{sha256_hex(self.data)}"\nsize = {size}\n',
            "utf-8",
        )
        self.cache = tmp_path / "cache"
        self.cache.mkdir()
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.victim = self.outside / "precious.txt"
        self.victim.write_bytes(b"do not touch\n")

    def cli(self, *args: str) -> Result:
        return Cli()("--cache-dir", str(self.cache), "--registry", str(self.registry), *args)

    def assert_verified(self) -> None:
        final = self.cache / "m.pt"
        assert not final.is_symlink() and final.read_bytes() == self.data
        assert self.cli("verify", "m").exit_code == 0

    def outside_untouched(self) -> dict[str, tuple[int, str]]:
        return tree(self.outside)


@pytest.fixture
def setup(server: HTTPServer, tmp_path: Path) -> Setup:
    return Setup(server, tmp_path)


@pytest.mark.parametrize(
    "trap",
    [
        "final-to-file",
        "final-dangling",
        "partial-to-file",
        "partial-dangling",
        "sidecar",
        "stamp",
        "owner",
        "lock",
    ],
)
def test_planted_symlink_is_never_written_through(setup: Setup, trap: str) -> None:
    state = setup.cache / ".whisperctl"
    (state / "stamps").mkdir(parents=True)
    (state / "locks").mkdir()
    target = setup.outside / "planted-target"  # dangling: must never be created
    link, points_to = {
        "final-to-file": (setup.cache / "m.pt", setup.victim),
        "final-dangling": (setup.cache / "m.pt", target),
        "partial-to-file": (setup.cache / "m.pt.part", setup.victim),
        "partial-dangling": (setup.cache / "m.pt.part", target),
        "sidecar": (setup.cache / "m.pt.part.json", setup.victim),
        "stamp": (state / "stamps" / "m.pt.json", setup.victim),
        "owner": (state / "locks" / "m.pt.owner", setup.victim),
        "lock": (state / "locks" / "m.pt.lock", setup.victim),
    }[trap]
    link.symlink_to(points_to)
    if trap.startswith("partial"):  # a sidecar that invites a resume into the link
        size = len(setup.data)
        (setup.cache / "m.pt.part.json").write_text(
            f'{{"version": 1, "sha256": "{sha256_hex(setup.data)}", "url": "{setup.server.url("/m.pt")}", '
            f'"total": {size}, "etag": null, "last_modified": null, "segments": [[0, {size}, 100]]}}'
        )
    before = setup.outside_untouched()
    if trap == "sidecar":  # a run cut off after some bytes writes the sidecar: where the link is
        setup.server.set_faults("/m.pt", reset_after=64 * KiB, reset_times=1)

        async def quick(_: float) -> None:
            setup.server.set_faults("/m.pt", status=503)

        (rec,) = api.download(
            ["m"],
            cache_dir=setup.cache,
            registry=setup.registry,
            options=TransferOptions(retries=1, sleep=quick),
            check=False,
        )
        assert rec.exit_code == 3 and (setup.cache / "m.pt.part.json").is_file()
        assert not (setup.cache / "m.pt.part.json").is_symlink()
        setup.server.set_faults("/m.pt")
    result = setup.cli("download", "m")
    assert result.exit_code == 0, result.stderr
    assert setup.outside_untouched() == before
    assert not target.exists()
    setup.assert_verified()


@pytest.mark.parametrize("command", [["download", "m"], ["rm", "m"], ["prune"]])
@pytest.mark.parametrize("which", [".whisperctl", ".whisperctl/stamps", ".whisperctl/locks"])
def test_state_folder_symlinked_out_of_the_cache_is_refused(
    setup: Setup, which: str, command: list[str]
) -> None:
    elsewhere = setup.outside / "state"
    # What rm and prune would take for stamps and locks of the model, or of files that are gone.
    for folder in (elsewhere, elsewhere / "stamps", elsewhere / "locks"):
        folder.mkdir()
        for name in ("m.pt.json", "gone.pt.json", "m.pt.lock", "gone.pt.lock"):
            (folder / name).write_text("someone else's\n")
    link = setup.cache / which
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    before = setup.outside_untouched()
    result = setup.cli(*command)
    assert result.exit_code == 6, result.stderr
    one_error_line(result, str(link), "symlink")
    assert setup.outside_untouched() == before
    assert not (setup.cache / "m.pt").exists()


def test_final_symlink_to_a_directory_is_a_clear_cache_error(setup: Setup) -> None:
    (setup.cache / "m.pt").symlink_to(setup.outside)
    before = setup.outside_untouched()
    result = setup.cli("download", "m")
    assert result.exit_code == 6, result.stderr
    one_error_line(result, str(setup.cache / "m.pt"))
    assert setup.outside_untouched() == before


@pytest.mark.parametrize("command", [["list"], ["info", "m"], ["path", "m"], ["download", "m"], ["verify"]])
def test_cache_path_that_is_a_file(setup: Setup, command: list[str]) -> None:
    shutil.rmtree(setup.cache)
    setup.cache.write_bytes(b"not a directory\n")
    result = setup.cli(*command)
    assert result.exit_code == 6, result.stderr
    one_error_line(result, str(setup.cache), "not a directory")
    assert setup.cache.read_bytes() == b"not a directory\n"
    assert setup.server.requests == []


# A read-only cache. Root ignores permissions, so as root the cache is made immutable (`chattr +i`), which
# refuses new entries and writes to everyone.
class ReadOnly:
    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        self.made: list[Path] = []

    def available(self, probe: Path) -> bool:
        if not self.as_root:
            return True
        probe.write_bytes(b"")
        done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, check=False)
        if done.returncode == 0:
            subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=False)
        probe.unlink()
        return done.returncode == 0

    def apply(self, path: Path, *, recursive: bool = True) -> None:
        paths = [path]
        if recursive:
            for dirpath, dirnames, filenames in os.walk(path):
                paths += [Path(dirpath) / n for n in dirnames + filenames]
        for p in reversed(paths):  # contents first: an immutable folder refuses nothing to its files' modes
            if self.as_root:
                subprocess.run(["chattr", "+i", str(p)], check=True, capture_output=True)
            else:
                p.chmod(0o555 if p.is_dir() else 0o444)
            self.made.append(p)

    def undo(self) -> None:
        for p in reversed(self.made):
            if self.as_root:
                subprocess.run(["chattr", "-i", str(p)], check=False, capture_output=True)
            else:
                p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.fixture
def read_only(setup: Setup, tmp_path: Path) -> Iterator[ReadOnly]:
    ro = ReadOnly()
    if not ro.available(tmp_path / "probe"):
        pytest.skip("running as root without chattr: permissions would not apply")
    try:
        yield ro
    finally:
        ro.undo()


def test_read_only_empty_cache_exits_6_and_writes_nothing(setup: Setup, read_only: ReadOnly) -> None:
    read_only.apply(setup.cache)
    before = tree(setup.cache.parent)
    result = setup.cli("download", "m")
    assert result.exit_code == 6, result.stderr
    one_error_line(result, str(setup.cache))
    assert tree(setup.cache.parent) == before


def test_read_only_cache_with_a_writable_state_folder_exits_6(setup: Setup, read_only: ReadOnly) -> None:
    for sub in ("stamps", "locks"):
        (setup.cache / ".whisperctl" / sub).mkdir(parents=True)
    read_only.apply(setup.cache, recursive=False)
    result = setup.cli("download", "m")
    assert result.exit_code == 6, result.stderr
    one_error_line(result, "m.pt")
    assert sorted(p.name for p in setup.cache.iterdir()) == [".whisperctl"]


def test_read_only_cache_still_serves_and_verifies_a_model(setup: Setup, read_only: ReadOnly) -> None:
    assert setup.cli("download", "m").exit_code == 0
    (setup.cache / ".whisperctl" / "stamps" / "m.pt.json").unlink()  # never hashed: `download` must hash it
    read_only.apply(setup.cache)
    before = tree(setup.cache.parent)
    for args in (["download", "m"], ["path", "m"], ["list"], ["verify", "m"]):
        result = setup.cli(*args)
        assert result.exit_code == 0, (args, result.stderr)
    assert tree(setup.cache.parent) == before


# -- hostile responses ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "location",
    ["file:///etc/passwd", "ftp://127.0.0.1/m.pt", "data:text/plain,hello", "gopher://127.0.0.1/"],
)
def test_redirect_to_a_non_http_scheme_is_refused(setup: Setup, location: str) -> None:
    setup.server.add("/m.pt", setup.data, redirect_to=location)
    result = setup.cli("download", "m")
    assert result.exit_code == 3, result.stderr
    # httpx itself refuses to parse some of them (`data:` has no `//`): then the address is not quoted back.
    line = one_error_line(result, "refused a redirect")
    assert location in line or "unusable address" in line
    assert sorted(p.name for p in setup.cache.iterdir() if p.name != ".whisperctl") == []


def test_redirect_from_https_to_http_is_refused(setup: Setup) -> None:
    try:
        tls = HTTPServer(tls=True)
    except TLSUnavailableError as exc:
        pytest.skip(str(exc))
    with tls:
        tls.add("/m.pt", b"", redirect_to=setup.server.url("/m.pt"))
        setup.registry.write_text(
            setup.registry.read_text().replace(setup.server.url("/m.pt"), tls.url("/m.pt"))
        )
        assert tls.cert_path is not None
        result = Cli()(
            "--cache-dir", str(setup.cache), "--registry", str(setup.registry), "download", "m",
            env={"SSL_CERT_FILE": str(tls.cert_path)},
        )  # fmt: skip
    assert result.exit_code == 3, result.stderr
    one_error_line(result, "https to plain http")
    assert setup.server.requests == []
    assert not (setup.cache / "m.pt").exists()


@pytest.mark.parametrize("ranges", [True, False], ids=["206", "200"])
def test_content_length_far_larger_than_the_registry_size_is_refused_before_the_body(
    server: HTTPServer, tmp_path: Path, ranges: bool
) -> None:
    setup = Setup(server, tmp_path)
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, sparse: it costs no space
    server.add("/m.pt", huge, no_range=not ranges)
    result = setup.cli("download", "m")
    assert result.exit_code == 4, result.stderr
    one_error_line(result, f"{1 << 40:,} bytes", f"expected {len(setup.data):,}")
    assert not any(p.name.startswith("m.pt") for p in setup.cache.iterdir())
    server.close()
    assert all(r.bytes_sent < 64 * MiB for r in server.requests)


def test_absurd_content_length_without_a_registry_size_is_refused_before_allocating(
    server: HTTPServer, tmp_path: Path
) -> None:
    # Over max_unknown_size (64 GiB) and over the free space: the server's claim is refused as such (exit 4),
    # never passed to posix_fallocate to come back as a full disk (exit 6).
    setup = Setup(server, tmp_path)
    huge = tmp_path / "huge.bin"
    size = shutil.disk_usage(tmp_path).free + (1 << 40)
    with open(huge, "wb") as f:
        f.truncate(size)
    server.add("/m.pt", huge)
    setup.registry.write_text("\n".join(setup.registry.read_text().splitlines()[:3]) + "\n")  # no size
    result = setup.cli("download", "m")
    assert result.exit_code == 4, result.stderr
    one_error_line(result, f"{size:,} bytes, more than the limit")
    assert not any(p.name.startswith("m.pt") for p in setup.cache.iterdir())


@pytest.mark.parametrize("framing", ["no_content_length", "chunked"])
def test_endless_body_is_cut_off_at_the_registry_size(
    server: HTTPServer, tmp_path: Path, framing: str
) -> None:
    setup = Setup(server, tmp_path, no_range=True, oversize_by=1 << 40, **{framing: True})
    result = setup.cli("download", "m")
    assert result.exit_code == 4, result.stderr
    one_error_line(result, "more than the expected")
    assert not any(p.name.startswith("m.pt") for p in setup.cache.iterdir())
    server.close()
    assert all(r.bytes_sent < 64 * MiB for r in server.requests)
