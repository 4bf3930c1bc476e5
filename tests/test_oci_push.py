"""`whisperctl push` against the CNCF distribution registry (tests/registry.py): what is sent and skipped,
cross-repository mounts, an interrupted push that resumes, and the failures before anything is sent."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

from whisperctl import api
from whisperctl.fetch.http.client import make_client
from whisperctl.fetch.oci.artifact import build_artifact, build_config, parse_manifest
from whisperctl.fetch.oci.client import RegistryClient
from whisperctl.fetch.oci.push import BlobPush, PushOptions, push_artifact
from whisperctl.fetch.oci.reference import parse_oci_url
from whisperctl.fetch.transfer import TransferOptions

from .helpers import Cli
from .oci_lab import OciLab
from .registry import Registry

KiB = 1024
MiB = 1024 * KiB
REPO = "fleet/push"


def push(lab: OciLab, reg: Registry, *args: str) -> tuple[int, dict[str, object], str]:
    env = lab.env(reg)
    result = Cli()(
        "--cache-dir", str(lab.cache), "--registry", str(lab.registry), "push", "--json", *args, env=env
    )
    return result.exit_code, json.loads(result.stdout) if result.exit_code == 0 else {}, result.stderr


def uploads(reg: Registry, since: int = 0) -> list[tuple[str, str]]:
    return [(line.method, line.path) for line in reg.requests()[since:] if "/blobs/uploads/" in line.path]


def registry_blob(reg: Registry, repository: str, digest: str) -> bytes:
    with reg.client() as http:
        headers = reg.bearer(f"repository:{repository}:pull") if reg.token_server else {}
        r = http.get(f"/v2/{repository}/blobs/{digest}", headers=headers, follow_redirects=True)
    assert r.status_code == 200, r.text
    return r.content


def test_push_sends_each_blob_once_and_tags_the_manifest(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 300 * KiB + 3)
    blob = lab.blobs[0]
    lab.fill()
    config_size = len(build_config(api.open_context(None, lab.registry)[0].get(blob.name)))

    code, report, stderr = push(lab, registry, registry.url(REPO), blob.name)
    assert code == 0, stderr
    assert set(report) == {"registry", "models", "bytes_sent", "bytes_skipped"}
    [model] = report["models"]  # type: ignore[index]
    keys = "name reference manifest_digest sha256 size_bytes layer bytes_sent bytes_skipped"
    assert list(model) == keys.split()
    assert model["layer"] == "sent"
    assert (model["bytes_sent"], model["bytes_skipped"]) == (len(blob.data) + config_size, 0)
    assert report["bytes_sent"] == model["bytes_sent"]
    assert model["reference"] == f"{registry.url(REPO)}:{blob.name}"

    with registry.client() as http:
        r = http.get(
            f"/v2/{REPO}/manifests/{blob.name}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
    assert r.status_code == 200
    assert f"sha256:{hashlib.sha256(r.content).hexdigest()}" == model["manifest_digest"]
    assert parse_manifest(r.content, where="test").model_layer.hex == blob.sha256
    assert registry_blob(registry, REPO, f"sha256:{blob.sha256}") == blob.data

    before = len(registry.requests())
    code, again, stderr = push(lab, registry, registry.url(REPO), blob.name)
    assert code == 0, stderr
    [model] = again["models"]  # type: ignore[index]
    assert model["layer"] == "present"
    assert (model["bytes_sent"], model["bytes_skipped"]) == (0, len(blob.data) + config_size)
    assert uploads(registry, before) == []  # HEAD said it is there: nothing uploaded


def test_mount_from_another_repository(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 200 * KiB)
    blob = lab.blobs[0]
    lab.fill()
    assert push(lab, registry, registry.url("team/a"), blob.name)[0] == 0
    before = len(registry.requests())
    code, report, stderr = push(lab, registry, registry.url("team/b"), "--mount-from", "team/a", blob.name)
    assert code == 0, stderr
    [model] = report["models"]  # type: ignore[index]
    assert model["layer"] == "mounted"
    assert not [path for method, path in uploads(registry, before) if method == "PATCH"]
    assert registry_blob(registry, "team/b", f"sha256:{blob.sha256}") == blob.data
    # Remembered: a push to a third repository mounts from the last one it went to, unasked.
    code, report, stderr = push(lab, registry, registry.url("team/d"), blob.name)
    assert code == 0, stderr
    assert report["models"][0]["layer"] == "mounted"  # type: ignore[index]
    assert [p for _, p in uploads(registry) if p.startswith("/v2/team/d/") and "from=team/b" in unquote(p)]
    # A repository without the blob: the registry starts an upload instead, and the blob is sent.
    code, report, stderr = push(lab, registry, registry.url("team/c"), "--mount-from", "team/none", blob.name)
    assert code == 0, stderr
    assert report["models"][0]["layer"] == "sent"  # type: ignore[index]
    assert registry_blob(registry, "team/c", f"sha256:{blob.sha256}") == blob.data


def test_a_stopped_push_resumes_where_the_registry_says(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = OciLab(tmp_path, 1 * MiB + 5)
    blob = lab.blobs[0]
    lab.fill()
    for key, value in lab.env(registry).items():
        monkeypatch.setenv(key, value)
    chunk = 256 * KiB
    sent: list[int] = []

    class Progress:
        def start(self, name: str, total: int | None, completed: int) -> None:
            assert (name, total, completed) == (blob.name, len(blob.data), 0)

        def advance(self, name: str, nbytes: int) -> None:
            sent.append(nbytes)

    with pytest.raises(KeyboardInterrupt):
        api.push(
            registry.url(REPO),
            [blob.name],
            chunk_size=chunk,
            cache_dir=lab.cache,
            registry=lab.registry,
            progress=Progress(),
            stop=lambda: sum(sent) >= 2 * chunk,  # as a Ctrl-C after the second chunk
        )
    [state_file] = (lab.cache / ".whisperctl" / "uploads").iterdir()
    state = json.loads(state_file.read_text())
    assert state["offset"] == 2 * chunk and state["digest"] == f"sha256:{blob.sha256}"

    before = len(registry.requests())
    report = api.push(
        registry.url(REPO), [blob.name], chunk_size=chunk, cache_dir=lab.cache, registry=lab.registry
    )
    [model] = report.models
    assert model.layer == "resumed"
    config_size = len(build_config(api.open_context(None, lab.registry)[0].get(blob.name)))
    assert (model.bytes_sent, model.bytes_skipped) == (len(blob.data) - 2 * chunk + config_size, 2 * chunk)
    assert uploads(registry, before)[0][0] == "GET"  # asked the registry what it holds first
    assert not state_file.exists()
    assert registry_blob(registry, REPO, f"sha256:{blob.sha256}") == blob.data


def test_ctrl_c_in_the_middle_of_a_blob_then_push_again(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 96 * MiB)
    blob = lab.blobs[0]
    lab.fill()
    env = lab.env(registry)
    proc = subprocess.Popen(
        lab.command("push", registry.url(REPO), blob.name),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in registry.storage.rglob("_uploads/*/data")):
            assert proc.poll() is None and time.monotonic() < deadline, "no bytes reached the registry"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    [state_file] = (lab.cache / ".whisperctl" / "uploads").iterdir()
    offset = json.loads(state_file.read_text())["offset"]
    assert 0 < offset < len(blob.data)

    done = lab.run("push", "--json", registry.url(REPO), blob.name, env=env)
    assert done.returncode == 0, done.stderr
    [model] = json.loads(done.stdout)["models"]
    assert model["layer"] == "resumed" and model["bytes_skipped"] == offset
    assert registry_blob(registry, REPO, f"sha256:{blob.sha256}") == blob.data


def test_a_corrupt_or_missing_model_stops_before_anything_is_sent(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 64 * KiB, 64 * KiB)
    b0, b1 = lab.blobs
    lab.fill(b0)
    code, _, stderr = push(lab, registry, registry.url(REPO), b0.name, b1.name)
    assert code == 5 and stderr.count("\n") == 1 and f"{b1.name}: not in the cache" in stderr
    lab.fill(b1)
    (lab.cache / b1.filename).write_bytes(b"x" * len(b1.data))  # same size, other bytes: hashed again
    code, _, stderr = push(lab, registry, registry.url(REPO), b0.name, b1.name)
    assert code == 4 and stderr.count("\n") == 1 and f"verify --repair {b1.name}" in stderr
    assert uploads(registry) == []


def test_no_credentials_is_one_line_exit_3(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 64 * KiB)
    lab.fill()
    env = lab.env(registry, auth=False)
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "none.json")
    result = Cli()(
        "--cache-dir",
        str(lab.cache),
        "--registry",
        str(lab.registry),
        "push",
        registry.url(REPO),
        "m0",
        env=env,
    )
    assert result.exit_code == 3, result.stderr
    assert result.stderr.count("\n") == 1 and registry.host in result.stderr


def test_a_long_push_asks_about_its_upload_before_a_chunk_so_a_token_can_be_renewed(
    tmp_path: Path, token_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = OciLab(tmp_path, 700 * KiB)
    blob = lab.blobs[0]
    lab.fill()
    for key, value in lab.env(token_registry).items():
        monkeypatch.setenv(key, value)
    reg, cache = api.open_context(lab.cache, lab.registry)
    spec = reg.get(blob.name)
    options = PushOptions(state_dir=tmp_path / "uploads", chunk_size=256 * KiB, reauthorize_after=0.0)

    async def run() -> list[BlobPush]:
        async with make_client(
            timeout=TransferOptions().timeout(), max_connections=2, lean_http=False
        ) as http:
            client = RegistryClient(parse_oci_url(token_registry.url(REPO)), http)
            artifact = build_artifact(spec, len(blob.data))
            return await push_artifact(client, artifact, cache.path_for(spec), options)

    blobs = asyncio.run(run())
    assert [b.how for b in blobs] == ["sent", "sent"]
    methods = [method for method, _ in uploads(token_registry)]
    assert methods == ["POST", *["GET", "PATCH"] * 3, "PUT", "POST", "PUT"]  # then the config
    assert registry_blob(token_registry, REPO, f"sha256:{blob.sha256}") == blob.data


# VmHWM, not ru_maxrss: a forked child's ru_maxrss starts from its parent's (this test holds the blob).
_PEAK = """
import atexit, re, sys
def peak():
    status = open("/proc/self/status").read()
    print("peak", re.search(r"VmHWM:\\s+(\\d+)", status)[1], file=sys.stderr)
atexit.register(peak)
from whisperctl.cli.app import main
sys.argv[0] = "whisperctl"
main()
"""


def test_a_large_push_reads_the_file_in_bounded_memory(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 160 * MiB)
    blob = lab.blobs[0]
    lab.fill()
    args = ["--cache-dir", str(lab.cache), "--registry", str(lab.registry), "push", registry.url(REPO), "m0"]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, *args],
        env=lab.env(registry),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    peak_kib = int(done.stderr.split("peak")[-1])
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB for a {len(blob.data) >> 20} MiB push"


def test_the_file_body_reads_ahead_and_ends_cleanly(tmp_path: Path) -> None:
    """The body a PATCH sends: every byte in order, read ahead in a thread; a file found shorter than it was
    verified is one IntegrityError; a body abandoned mid-way leaves no descriptor open."""
    from whisperctl.errors import IntegrityError
    from whisperctl.fetch.oci import push

    data = os.urandom(3 * push.READ_BUFFER + 12345)
    path = tmp_path / "blob"
    path.write_bytes(data)
    options = PushOptions(state_dir=tmp_path / "uploads")

    async def collect(offset: int, length: int, stop_after: int | None = None) -> bytes:
        body = push._FileBody(path, offset, length, options)
        out = b""
        chunks = body.chunks()
        try:
            async for chunk in chunks:
                out += chunk
                if stop_after is not None and len(out) >= stop_after:
                    break
        finally:
            await chunks.aclose()
        return out

    fds = len(os.listdir("/proc/self/fd"))
    assert asyncio.run(collect(0, len(data))) == data
    assert asyncio.run(collect(777, 2 * push.READ_BUFFER)) == data[777 : 777 + 2 * push.READ_BUFFER]
    assert asyncio.run(collect(0, len(data), stop_after=1)) == data[: push.READ_BUFFER]
    with pytest.raises(IntegrityError, match="shorter than when it was verified"):
        asyncio.run(collect(0, len(data) + 1))
    time.sleep(0.1)  # a read abandoned mid-way closes its descriptor once it ends
    assert len(os.listdir("/proc/self/fd")) == fds
