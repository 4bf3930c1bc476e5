"""``whisperctl verify``: full re-hashing, statuses, exit codes, stamps, ``--repair`` from a real server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from whisperctl import api
from whisperctl.models.registry import ModelSpec, load_registry
from whisperctl.store.cache import Cache

from .helpers import Cli, Result, sha256_hex, write_registry
from .httpserver import HTTPServer

KiB = 1024
VERIFY_KEYS = {"name", "path", "status", "sha256_expected", "sha256_actual"}


class Shelf:
    """Three user models with genuine digests, served by the test server, and a cache to put them in."""

    def __init__(self, server: HTTPServer, cache_dir: Path, tmp_path: Path) -> None:
        self.server, self.cache_dir = server, cache_dir
        self.data = {
            "alpha": os.urandom(64 * KiB),
            "beta": os.urandom(96 * KiB),
            "gamma": os.urandom(32 * KiB),
        }
        entries = []
        for name, blob in self.data.items():
            server.add(f"/{name}.pt", blob)
            entries.append(
                f'[models.{name}]\nurl = "{server.url(f"/{name}.pt")}"\nsha256 = "{sha256_hex(blob)}"\n'
                f"size = {len(blob)}\n"
            )
        self.registry = write_registry(tmp_path / "models.toml", "\n".join(entries))

    def path(self, name: str) -> Path:
        return self.cache_dir / f"{name}.pt"

    def put(self, name: str, data: bytes | None = None) -> Path:
        """A file in the cache, unstamped (as openai-whisper leaves it); the right bytes unless told."""
        path = self.path(name)
        path.write_bytes(self.data[name] if data is None else data)
        return path

    def cli(self, *args: str) -> Result:
        return Cli()("--cache-dir", str(self.cache_dir), "--registry", str(self.registry), *args)

    def verify_json(self, *args: str) -> tuple[int, dict[str, dict[str, object]]]:
        result = self.cli("verify", "--json", *args)
        return result.exit_code, {r["name"]: r for r in json.loads(result.stdout)}

    def listed(self) -> dict[str, str]:
        result = self.cli("list", "--json")
        assert result.exit_code == 0, result.stderr
        return {e["name"]: e["status"] for e in json.loads(result.stdout) if e["name"] in self.data}


@pytest.fixture
def shelf(server: HTTPServer, cache_dir: Path, tmp_path: Path) -> Shelf:
    return Shelf(server, cache_dir, tmp_path)


def test_good_file_is_verified_exits_0_and_gets_stamped(shelf: Shelf) -> None:
    shelf.put("alpha")
    assert shelf.listed()["alpha"] == "present"
    code, records = shelf.verify_json("alpha")
    assert code == 0
    rec = records["alpha"]
    assert set(rec) >= VERIFY_KEYS
    assert (rec["status"], rec["path"]) == ("verified", str(shelf.path("alpha")))
    assert rec["sha256_expected"] == rec["sha256_actual"] == sha256_hex(shelf.data["alpha"])
    assert shelf.listed()["alpha"] == "verified"  # the stamp spares the next command a hash
    assert shelf.server.requests == []


def test_table_output_names_each_status(shelf: Shelf) -> None:
    shelf.put("alpha")
    shelf.put("beta", b"wrong")
    result = shelf.cli("verify", "alpha", "beta", "gamma")
    assert result.exit_code == 4
    lines = result.stdout.splitlines()
    assert any(line.startswith("alpha: verified") for line in lines)
    assert any(line.startswith("gamma: missing") for line in lines)
    beta = next(line for line in lines if line.startswith("beta: corrupt"))
    assert sha256_hex(shelf.data["beta"]) in beta and sha256_hex(b"wrong") in beta and "--repair" in beta


@pytest.mark.parametrize("state", ["missing", "partial", "both"])
def test_missing_or_partial_only_exits_5(shelf: Shelf, state: str) -> None:
    if state in ("partial", "both"):
        (shelf.cache_dir / "alpha.pt.part").write_bytes(shelf.data["alpha"][:1000])
    shelf.put("beta")
    names = ["alpha", "beta"] + (["gamma"] if state in ("missing", "both") else [])
    code, records = shelf.verify_json(*names)
    assert code == 5
    assert records["alpha"]["status"] == ("missing" if state == "missing" else "partial")
    assert records["alpha"]["sha256_actual"] is None
    assert records["beta"]["status"] == "verified"
    if "gamma" in names:
        assert (records["gamma"]["status"], records["gamma"]["sha256_actual"]) == ("missing", None)


@pytest.mark.parametrize("also_missing", [False, True])
def test_corrupt_file_exits_4_and_is_left_in_place(shelf: Shelf, also_missing: bool) -> None:
    wrong = os.urandom(len(shelf.data["alpha"]))
    shelf.put("alpha", wrong)
    names = ["alpha", "gamma"] if also_missing else ["alpha"]
    code, records = shelf.verify_json(*names)
    assert code == 4  # a corrupt file outweighs a missing one
    assert records["alpha"]["status"] == "corrupt"
    assert records["alpha"]["sha256_expected"] == sha256_hex(shelf.data["alpha"])
    assert records["alpha"]["sha256_actual"] == sha256_hex(wrong)
    assert shelf.path("alpha").read_bytes() == wrong  # verify reports; it does not delete
    assert shelf.listed()["alpha"] == "corrupt"
    path = shelf.cli("path", "alpha")
    assert path.exit_code == 4 and sha256_hex(wrong) in path.stderr
    assert shelf.server.requests == []


def test_without_names_every_model_on_disk_is_checked(shelf: Shelf) -> None:
    shelf.put("alpha")
    shelf.put("beta", b"not beta")
    code, records = shelf.verify_json()
    assert code == 4
    assert {name: r["status"] for name, r in records.items()} == {"alpha": "verified", "beta": "corrupt"}
    # gamma is not on disk, and neither is any official model: none of them is listed.
    assert all(not name.startswith(("tiny", "base", "large")) for name in records)


def test_without_names_and_only_good_files_exits_0(shelf: Shelf) -> None:
    shelf.put("alpha")
    shelf.put("gamma")
    code, records = shelf.verify_json()
    assert code == 0 and set(records) == {"alpha", "gamma"}


def test_without_names_a_partial_download_exits_5(shelf: Shelf) -> None:
    shelf.put("alpha")
    (shelf.cache_dir / "beta.pt.part").write_bytes(b"x" * 100)
    code, records = shelf.verify_json()
    assert code == 5
    assert {name: r["status"] for name, r in records.items()} == {"alpha": "verified", "beta": "partial"}


def test_verify_rehashes_in_full_despite_a_matching_stamp(shelf: Shelf) -> None:
    path = shelf.put("alpha")
    assert shelf.verify_json("alpha")[0] == 0
    st = path.stat()
    with open(path, "r+b") as f:  # flip a byte in place and restore the mtime: the stamp still matches
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert shelf.listed()["alpha"] == "verified"  # the cheap check trusts the stamp...
    code, records = shelf.verify_json("alpha")
    assert code == 4 and records["alpha"]["status"] == "corrupt"  # ...the full hash does not
    assert shelf.listed()["alpha"] == "corrupt"


def test_repair_downloads_the_corrupt_file_again(shelf: Shelf) -> None:
    shelf.put("alpha")
    shelf.put("beta", os.urandom(len(shelf.data["beta"])))
    code, records = shelf.verify_json("--repair", "alpha", "beta")
    assert code == 0
    assert {name: r["status"] for name, r in records.items()} == {"alpha": "verified", "beta": "verified"}
    assert records["beta"]["sha256_actual"] == sha256_hex(shelf.data["beta"])
    assert shelf.path("beta").read_bytes() == shelf.data["beta"]
    assert [(r.path, r.method) for r in shelf.server.requests] == [("/beta.pt", "GET")]  # only beta
    assert shelf.listed() == {"alpha": "verified", "beta": "verified", "gamma": "missing"}


def test_repair_that_cannot_download_still_exits_4(shelf: Shelf) -> None:
    shelf.put("beta", b"wrong")
    shelf.server.set_faults("/beta.pt", status=404)
    code, records = shelf.verify_json("--repair", "beta")
    assert code == 4
    assert records["beta"]["status"] == "corrupt"
    assert shelf.path("beta").read_bytes() == b"wrong"  # a failed repair leaves the file as it was
    error = str(records["beta"]["error"])
    assert error.startswith("not repaired: ") and "404" in error  # and says why
    table = shelf.cli("verify", "--repair", "beta")
    assert table.exit_code == 4 and "beta: corrupt" in table.stdout and "not repaired: " in table.stdout


def test_library_verify_returns_records(shelf: Shelf) -> None:
    shelf.put("alpha")
    shelf.put("beta", b"bad")
    started: list[tuple[str, int]] = []
    hashed: dict[str, int] = {}

    def on_bytes(spec: ModelSpec, n: int) -> None:
        hashed[spec.name] = hashed.get(spec.name, 0) + n

    records = api.verify(
        ["alpha", "beta", "gamma"],
        cache_dir=shelf.cache_dir,
        registry=shelf.registry,
        on_start=lambda spec, size: started.append((spec.name, size)),
        on_bytes=on_bytes,
    )
    assert [(r.name, r.status, r.ok) for r in records] == [
        ("alpha", "verified", True),
        ("beta", "corrupt", False),
        ("gamma", "missing", False),
    ]
    assert records[0].size_bytes == len(shelf.data["alpha"])
    assert sorted(started) == [("alpha", len(shelf.data["alpha"])), ("beta", 3)]
    assert hashed == {"alpha": len(shelf.data["alpha"]), "beta": 3}
    stamp = Cache(shelf.cache_dir).read_stamp(load_registry(shelf.registry).get("beta"))
    assert stamp is not None and stamp.sha256 == sha256_hex(b"bad")


def test_unknown_name_exits_2(shelf: Shelf) -> None:
    result = shelf.cli("verify", "nope")
    assert result.exit_code == 2 and "unknown model 'nope'" in result.stderr
