"""The command line: list / info / path, global options, exit codes, JSON, startup without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from whisperctl import api
from whisperctl._version import __version__
from whisperctl.errors import (
    CacheError,
    DeviceError,
    DownloadError,
    ExitCode,
    IntegrityError,
    ManifestError,
    NetworkError,
    NotCachedError,
    RegistryError,
    TorchMissingError,
    UnknownModelError,
    UsageError,
    WhisperctlError,
)
from whisperctl.models.registry import Registry
from whisperctl.store.cache import Cache

from .helpers import Cli, sha256_hex, write_registry
from .httpserver import HTTPServer

SRC = Path(__file__).resolve().parents[1] / "src" / "whisperctl"

# One object per model, the same in `list --json` and `info NAME --json` (which adds "checkpoint").
MODEL_KEYS = {
    "name",
    "url",
    "sha256",
    "filename",
    "size_bytes",
    "source",
    "dims",
    "english_only",
    "alignment_heads",
    "aliases",
    "registry_file",
    "parameters",
    "path",
    "status",
    "size_on_disk",
    "partial_path",
    "sha256_measured",
}


def _fake_official(cache_dir: Path, name: str, data: bytes = b"not really a checkpoint") -> Path:
    """A file where openai-whisper would have put it (status present: whisperctl never hashed it)."""
    path = cache_dir / f"{name}.pt"
    path.write_bytes(data)
    return path


@pytest.fixture
def user_model(tmp_path: Path, cache_dir: Path) -> tuple[Path, bytes]:
    """A registry entry whose digest is genuine, so it can be verified."""
    data = os.urandom(4096)
    registry = write_registry(
        tmp_path / "models.toml",
        f'[models.mine]\nurl = "http://127.0.0.1:9/mine.pt"\nsha256 = "{sha256_hex(data)}"\n'
        f"size = {len(data)}\n",
    )
    return registry, data


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"whisperctl {__version__}"


def test_no_arguments_shows_help(cli: Cli) -> None:
    result = cli()
    assert "list" in result.stdout + result.stderr
    assert result.exit_code in (0, 2)


def test_list_table(cli: Cli, cache_dir: Path) -> None:
    _fake_official(cache_dir, "tiny")
    result = cli("--cache-dir", str(cache_dir), "list")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    tiny = next(line for line in lines if "│ tiny " in line)
    assert "37.2M" in tiny and "75.6 MB" in tiny and "multilingual" in tiny and "present" in tiny
    assert str(cache_dir / "tiny.pt") in tiny
    large = next(line for line in lines if "│ large-v3 " in line)
    assert "large" in large and "1.54B" in large and "missing" in large
    assert f"cache: {cache_dir} (1 files" in result.stdout
    assert "\x1b[" not in result.stdout, "no colour codes when stdout is not a terminal"


def test_list_json_round_trip(cli: Cli, cache_dir: Path) -> None:
    _fake_official(cache_dir, "large-v3")
    result = cli("--cache-dir", str(cache_dir), "list", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert len(rows) == 12
    for row in rows:
        assert set(row) == MODEL_KEYS
    by_name = {r["name"]: r for r in rows}
    assert by_name["large-v3"]["aliases"] == ["large"]
    assert by_name["large-v3"]["status"] == "present"
    assert by_name["large-v3"]["path"] == str(cache_dir / "large-v3.pt")
    assert by_name["tiny"]["parameters"] == {"encoder": 7_632_384, "decoder": 29_552_256, "total": 37_184_640}
    assert by_name["tiny"]["status"] == "missing"
    assert by_name["large-v3-turbo"]["size_bytes"] is None
    assert by_name["tiny.en"]["english_only"] is True


def test_list_cached_only(cli: Cli, cache_dir: Path) -> None:
    _fake_official(cache_dir, "base")
    (cache_dir / "small.pt.part").write_bytes(b"half")
    rows = json.loads(cli("--cache-dir", str(cache_dir), "list", "--cached", "--json").stdout)
    assert [r["name"] for r in rows] == ["base"]
    rows = json.loads(cli("--cache-dir", str(cache_dir), "list", "--json").stdout)
    assert {r["name"]: r["status"] for r in rows}["small"] == "partial"


def test_every_status_in_json(cli: Cli, cache_dir: Path, user_model: tuple[Path, bytes]) -> None:
    registry, data = user_model
    base = ("--registry", str(registry), "--cache-dir", str(cache_dir))

    def status() -> str:
        out = cli(*base, "info", "mine", "--json")
        assert out.exit_code == 0, out.stderr
        return str(json.loads(out.stdout)["status"])

    assert status() == "missing"
    (cache_dir / "mine.pt.part").write_bytes(data[:100])
    assert status() == "partial"
    (cache_dir / "mine.pt").write_bytes(data)
    assert status() == "present"
    spec = Registry().get("tiny")  # any spec: write_stamp takes the measured digest
    cache = Cache(cache_dir)
    mine = next(s for s in cache_registry(registry) if s.name == "mine")
    cache.write_stamp(mine, (cache_dir / "mine.pt").stat(), sha256_hex(data))
    assert status() == "verified"
    cache.write_stamp(mine, (cache_dir / "mine.pt").stat(), spec.sha256)
    assert status() == "corrupt"


def cache_registry(path: Path) -> Registry:
    from whisperctl.models.registry import load_registry

    return load_registry(path)


def test_info_json(cli: Cli, cache_dir: Path) -> None:
    result = cli("--cache-dir", str(cache_dir), "info", "turbo", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == MODEL_KEYS | {"checkpoint"}
    assert data["checkpoint"] is None  # no file
    assert data["name"] == "large-v3-turbo"
    assert data["dims"]["n_text_layer"] == 4 and data["dims"]["n_mels"] == 128
    p = data["parameters"]
    assert p["total"] == p["encoder"] + p["decoder"]
    assert data["alignment_heads"]["count"] == len(data["alignment_heads"]["pairs"]) == 6
    assert [2, 4] in data["alignment_heads"]["pairs"]
    assert data["size_bytes"] is None
    assert data["status"] == "missing"


def test_info_table(cli: Cli, cache_dir: Path) -> None:
    result = cli("--cache-dir", str(cache_dir), "info", "tiny")
    assert result.exit_code == 0
    out = result.stdout
    assert "37,184,640 total = 7,632,384 encoder + 29,552,256 decoder" in out
    assert "(2,2) (3,0) (3,2) (3,3) (3,4) (3,5)" in out
    assert "75,572,083 bytes" in out
    assert Registry().get("tiny").sha256 in out


def test_path_exit_codes(cli: Cli, cache_dir: Path, user_model: tuple[Path, bytes]) -> None:
    registry, data = user_model
    base = ("--registry", str(registry), "--cache-dir", str(cache_dir))
    missing = cli(*base, "path", "mine")
    assert missing.exit_code == 5
    assert missing.stdout == ""
    assert "mine: not in the cache" in missing.stderr and "whisperctl download mine" in missing.stderr

    (cache_dir / "mine.pt.part").write_bytes(b"x")
    partial = cli(*base, "path", "mine")
    assert partial.exit_code == 5 and "partial download" in partial.stderr

    (cache_dir / "mine.pt").write_bytes(data)
    present = cli(*base, "path", "mine")
    assert present.exit_code == 0
    assert present.stdout == f"{cache_dir / 'mine.pt'}\n", "the path and nothing else"
    assert present.stderr == ""

    mine = cache_registry(registry).get("mine")
    Cache(cache_dir).write_stamp(mine, (cache_dir / "mine.pt").stat(), "f" * 64)
    corrupt = cli(*base, "path", "mine")
    assert corrupt.exit_code == 4 and "failed verification" in corrupt.stderr and "f" * 64 in corrupt.stderr


def test_path_alias(cli: Cli, cache_dir: Path) -> None:
    _fake_official(cache_dir, "large-v3-turbo")
    result = cli("--cache-dir", str(cache_dir), "path", "turbo")
    assert result.exit_code == 0
    assert result.stdout.strip() == str(cache_dir / "large-v3-turbo.pt")


@pytest.mark.parametrize("command", ["info", "path"])
def test_unknown_name_exit_2_with_suggestions(cli: Cli, command: str) -> None:
    result = cli(command, "larg-v3")
    assert result.exit_code == 2
    assert "unknown model 'larg-v3'" in result.stderr
    assert "'large-v3'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cache_dir_env_and_xdg(cli: Cli, tmp_path: Path, isolated_env: Path) -> None:
    rows = json.loads(cli("list", "--json").stdout)
    assert rows[0]["path"] == str(isolated_env / ".cache" / "whisper" / "tiny.en.pt")
    xdg = tmp_path / "xdg"
    rows = json.loads(cli("list", "--json", env={"XDG_CACHE_HOME": str(xdg)}).stdout)
    assert rows[0]["path"] == str(xdg / "whisper" / "tiny.en.pt")
    env_dir = tmp_path / "envcache"
    env = {"XDG_CACHE_HOME": str(xdg), "WHISPERCTL_CACHE_DIR": str(env_dir)}
    assert json.loads(cli("list", "--json", env=env).stdout)[0]["path"] == str(env_dir / "tiny.en.pt")
    flag_dir = tmp_path / "flagcache"
    out = cli("--cache-dir", str(flag_dir), "list", "--json", env=env).stdout
    assert json.loads(out)[0]["path"] == str(flag_dir / "tiny.en.pt")


def test_cache_dir_is_a_file_exit_6(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "file"
    bad.write_text("x")
    result = cli("--cache-dir", str(bad), "list")
    assert result.exit_code == 6
    assert f"{bad}: the cache path is not a directory" in result.stderr


def test_verbose_names_the_cache_and_registry(cli: Cli, cache_dir: Path) -> None:
    result = cli("-v", "--cache-dir", str(cache_dir), "path", "tiny")
    assert result.exit_code == 5
    assert f"cache {cache_dir}; registry " in result.stderr
    assert "models.toml (default)" in result.stderr
    quiet = cli("--cache-dir", str(cache_dir), "path", "tiny")
    assert "registry" not in quiet.stderr


def test_quiet_still_prints_errors(cli: Cli) -> None:
    result = cli("-q", "info", "nope")
    assert result.exit_code == 2 and "unknown model" in result.stderr


def test_bad_option_is_usage_error(cli: Cli) -> None:
    result = cli("list", "--no-such-option")
    assert result.exit_code == 2


def test_exit_codes_are_one_tree() -> None:
    codes = {
        WhisperctlError: ExitCode.BUG,
        UsageError: ExitCode.USAGE,
        UnknownModelError: ExitCode.USAGE,
        RegistryError: ExitCode.USAGE,
        ManifestError: ExitCode.USAGE,
        TorchMissingError: ExitCode.USAGE,
        NetworkError: ExitCode.NETWORK,
        IntegrityError: ExitCode.INTEGRITY,
        NotCachedError: ExitCode.NOT_CACHED,
        CacheError: ExitCode.CACHE,
        DeviceError: ExitCode.DEVICE,
    }
    for cls, code in codes.items():
        assert issubclass(cls, WhisperctlError)
        assert cls.exit_code is code
    assert DownloadError("x", ExitCode.NETWORK, []).exit_code == 3
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0),
        ("BUG", 1),
        ("USAGE", 2),
        ("NETWORK", 3),
        ("INTEGRITY", 4),
        ("NOT_CACHED", 5),
        ("CACHE", 6),
        ("DEVICE", 7),
        ("INTERRUPTED", 130),
    ]


def test_exit_codes_are_never_bare_numbers_in_the_cli() -> None:
    import re

    for path in (SRC / "cli").glob("*.py"):
        text = path.read_text("utf-8")
        assert not re.search(r"Exit\(\s*\d", text), f"{path.name}: a bare exit code"
        assert not re.search(r"exit_code\s*[!=]=\s*\d", text), f"{path.name}: a bare exit code"


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """The modules a file imports at run time, lazily or not (``if TYPE_CHECKING:`` blocks left out), with
    the names imported from each."""
    import ast

    found: list[tuple[str, tuple[str, ...]]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, ()) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, tuple(a.name for a in child.names)))
            visit(child)

    visit(ast.parse(path.read_text("utf-8")))
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_layers_import_downwards_only_and_without_cycles() -> None:
    """cli -> api -> fetch -> store -> models: below cli nothing imports rich, typer, the cli or the package
    root; nothing below api imports api; and no module imports itself back, lazy imports included."""
    modules = {_module(path): path for path in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        layer = name.split(".")[1] if "." in name else ""
        deps: set[str] = set()
        for module, names in _imports(path):
            top = module.split(".")[0]
            if layer not in ("cli", "__main__"):
                assert top not in ("rich", "typer"), f"{name} imports {module}"
                assert not module.startswith("whisperctl.cli"), f"{name} imports {module}"
                assert module != "whisperctl", f"{name} imports the package root"
            if layer in ("fetch", "store", "models"):
                assert not module.startswith("whisperctl.api"), f"{name} imports {module}"
            # Below the face: fetch -> store -> models (the engine writes into the store; the store names
            # files after the registry's specs), never back up.
            if layer in ("store", "models"):
                assert not module.startswith("whisperctl.fetch"), f"{name} imports {module}"
            if layer == "models":
                assert not module.startswith("whisperctl.store"), f"{name} imports {module}"
            if top == "whisperctl":
                deps.add(module)
                deps.update(f"{module}.{n}" for n in names if f"{module}.{n}" in modules)
        graph[name] = {d for d in deps if d in modules and d != name}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return [*trail, dep]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*trail, dep]))
        return None

    cycles = [c for name in sorted(graph) if (c := cycle_from(name))]
    assert cycles == [], cycles


def test_select_models_merges_names_and_a_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "models.txt"
    manifest.write_text("tiny  # first in the file\nlarge\nsmall\n", "utf-8")
    specs = api.select_models(Registry(), ["small", "large-v3"], manifest=manifest)
    assert [s.name for s in specs] == ["small", "large-v3", "tiny"]  # each once, names first
    assert len(api.select_models(Registry(), all_models=True)) == 12
    manifest.write_text("tiny\nsmal\n", "utf-8")
    with pytest.raises(ManifestError, match="line 2: unknown model 'smal'"):  # checked even with --all
        api.select_models(Registry(), all_models=True, manifest=manifest)


def test_download_needs_a_model(cli: Cli, cache_dir: Path) -> None:
    result = cli("--cache-dir", str(cache_dir), "download")
    assert result.exit_code == 2 and "name at least one model" in result.stderr
    assert api.download([], cache_dir=cache_dir) == []  # the library: nothing asked, nothing done


def test_download_connections_is_applied_with_options(
    server: HTTPServer, tmp_path: Path, cache_dir: Path
) -> None:
    from whisperctl.fetch.transfer import TransferOptions

    data = os.urandom(3 * 1024 * 1024)
    server.add("/big.pt", data)
    registry = write_registry(
        tmp_path / "models.toml",
        f'[models.big]\nurl = "{server.url("/big.pt")}"\nsha256 = "{sha256_hex(data)}"\nsize = {len(data)}\n',
    )
    options = TransferOptions(connections=4, split_threshold=1024 * 1024, min_segment=256 * 1024)

    def gets(connections: int | None) -> int:
        before = len(server.requests_for("/big.pt", "GET"))
        (record,) = api.download(
            ["big"],
            cache_dir=cache_dir,
            registry=registry,
            force=True,
            options=options,
            connections=connections,
        )
        assert record.ok and record.sha256 == sha256_hex(data)
        return len(server.requests_for("/big.pt", "GET")) - before

    assert gets(None) >= 2  # the options' 4 connections: several ranges
    assert gets(1) == 1  # connections=1 replaces them: one stream
    with pytest.raises(UsageError, match="--connections 0"):
        api.download(["big"], cache_dir=cache_dir, registry=registry, options=options, connections=0)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )


def test_python_dash_m_help() -> None:
    result = _run("-m", "whisperctl", "--help")
    assert result.returncode == 0
    for command in ("list", "info", "path"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["list"], ["list", "--json"], ["path", "tiny"], ["info", "tiny"]]
)
def test_fast_commands_never_import_torch(args: list[str], tmp_path: Path) -> None:
    result = _run("-X", "importtime", "-m", "whisperctl", "--cache-dir", str(tmp_path), *args)
    assert result.returncode in (0, 5), result.stderr[-2000:]
    imported = {
        line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")
    }
    assert "whisperctl.cli" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in {"torch", "numpy", "httpx"})
    assert heavy == [], heavy


def _run_on_tty(args: list[str], env: dict[str, str]) -> str:
    """Run whisperctl with stdout on a pseudo-terminal, as at a shell, and return what it printed."""
    import pty

    leader, follower = pty.openpty()
    full_env = {**os.environ, "TERM": "xterm-256color", **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisperctl", *args], stdout=follower, stderr=subprocess.DEVNULL, env=full_env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


def test_colours_on_a_terminal_unless_no_color(tmp_path: Path) -> None:
    import re

    colour = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])[;m]")  # foreground colours; bold is not one
    (tmp_path / "tiny.pt").write_bytes(b"x")  # one "present" row, shown in cyan
    args = ["--cache-dir", str(tmp_path), "list"]
    assert colour.search(_run_on_tty(args, {})), "a terminal gets colours"
    assert not colour.search(_run_on_tty(args, {"NO_COLOR": "1"}))
