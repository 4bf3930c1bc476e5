"""OCI registries, end to end against the CNCF distribution registry (tests/registry.py) and skopeo.

whisperctl runs as a child process: ``push oci://...``, ``download --mirror oci://...`` and
``export --oci-layout``. Every pull lands in a fresh cache and is checked by digest; every failure is one line
with its documented exit code and nothing under a final name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import oci_client
from .helpers import file_sha256
from .oci_lab import OciLab, blob_requests
from .registry import Registry

KiB = 1024
MiB = 1024 * KiB
REPO = "fleet/whisper"


def pull(lab: OciLab, reg: Registry, name: str, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return lab.run("download", "--mirror", reg.url(REPO), name, cache=cache, env=lab.env(reg, **env))


def test_push_then_pull_into_a_fresh_cache_and_a_second_push_skips_the_blob(
    tmp_path: Path, registry: Registry
) -> None:
    lab = OciLab(tmp_path, 3 * MiB + 17)
    blob = lab.blobs[0]
    lab.fill()
    first = lab.run("push", registry.url(REPO), blob.name, env=lab.env(registry))
    assert first.returncode == 0, first.stderr
    uploads = [line for line in registry.requests() if "/blobs/uploads/" in line.path]
    assert uploads, "the first push uploaded nothing"

    fresh = tmp_path / "fresh"
    got = pull(lab, registry, blob.name, fresh)
    assert got.returncode == 0, got.stderr
    assert lab.final_files(fresh) == {blob.filename: blob.sha256}
    assert {("GET", 200), ("GET", 206)} & set(blob_requests(registry, REPO, blob.sha256))

    before = len(registry.requests())
    second = lab.run("push", "--json", registry.url(REPO), blob.name, env=lab.env(registry))
    assert second.returncode == 0, second.stderr
    again = registry.requests()[before:]
    assert not [line for line in again if "/blobs/uploads/" in line.path], again
    assert ("HEAD", 200) in [(line.method, line.status) for line in again]
    report = json.loads(second.stdout)
    assert report["bytes_sent"] == 0, report
    assert report["bytes_skipped"] >= len(blob.data), report  # the layer, and the config beside it


def _interrupt_push(lab: OciLab, registry: Registry, sig: signal.Signals) -> set[str]:
    """Starts ``push``, sends ``sig`` once the registry's log shows a PATCH (a chunk of the blob in), and
    returns the upload sessions the registry saw."""
    proc = subprocess.Popen(
        lab.command("push", registry.url(REPO), lab.blobs[0].name),
        env=lab.env(registry),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(line.method == "PATCH" for line in registry.requests()):
            assert proc.poll() is None, "the push ended before any PATCH reached the registry"
            assert time.monotonic() < deadline, "no PATCH within 60 s"
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, "the push was not interrupted: make the blob larger"
    pattern = re.compile(r"/blobs/uploads/([0-9a-f-]{36})")
    return {m.group(1) for line in registry.requests() if (m := pattern.search(line.path))}


def test_a_push_stopped_in_the_middle_of_a_blob_resumes_its_upload(
    tmp_path: Path, registry: Registry
) -> None:
    lab = OciLab(tmp_path, 160 * MiB)
    blob = lab.blobs[0]
    lab.fill()
    sessions = _interrupt_push(lab, registry, signal.SIGTERM)
    assert sessions
    before = len(registry.requests())

    done = lab.run("push", "--json", registry.url(REPO), blob.name, env=lab.env(registry))
    assert done.returncode == 0, done.stderr
    resumed = [line for line in registry.requests()[before:] if any(s in line.path for s in sessions)]
    assert resumed, "the second push started a new upload instead of resuming"
    report = json.loads(done.stdout)
    assert 0 < report["bytes_sent"] < len(blob.data), report  # only what the registry did not have yet
    fresh = tmp_path / "fresh"
    assert pull(lab, registry, blob.name, fresh).returncode == 0
    assert lab.final_files(fresh) == {blob.filename: blob.sha256}


def test_a_push_killed_in_the_middle_of_a_blob_is_completed_by_the_next(
    tmp_path: Path, registry: Registry
) -> None:
    """SIGKILL may land while a chunk is in flight: the registry then holds bytes past what whisperctl
    recorded, and distribution cancels that upload when asked ("upload resumed at wrong offset"); the next
    push resumes where it can and starts the blob anew where it cannot. Either way the tag names a whole,
    verified blob."""
    lab = OciLab(tmp_path, 160 * MiB)
    blob = lab.blobs[0]
    lab.fill()
    assert _interrupt_push(lab, registry, signal.SIGKILL)
    done = lab.run("push", "--json", registry.url(REPO), blob.name, env=lab.env(registry))
    assert done.returncode == 0, done.stderr
    assert 0 < json.loads(done.stdout)["bytes_sent"] <= len(blob.data) + 4096
    fresh = tmp_path / "fresh"
    assert pull(lab, registry, blob.name, fresh).returncode == 0
    assert lab.final_files(fresh) == {blob.filename: blob.sha256}


@pytest.mark.usefixtures("skopeo")
def test_skopeo_reads_what_whisperctl_pushed(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 200 * KiB)
    blob = lab.blobs[0]
    lab.fill()
    env = lab.env(registry)
    assert lab.run("push", registry.url(REPO), blob.name, env=env).returncode == 0

    manifest = oci_client.read_manifest(registry.host, REPO, blob.name, env)
    assert manifest["mediaType"] == oci_client.MANIFEST
    assert manifest["artifactType"] == oci_client.ARTIFACT
    assert manifest["config"]["mediaType"] == oci_client.CONFIG
    [layer] = manifest["layers"]
    assert layer["digest"] == f"sha256:{blob.sha256}"
    assert layer["size"] == len(blob.data)
    assert layer["mediaType"] == oci_client.WEIGHT
    assert layer["annotations"][oci_client.TITLE] == blob.filename

    copied = oci_client.pull_dir(registry.host, REPO, blob.name, tmp_path / "skopeo-copy", env)
    assert file_sha256(copied / blob.sha256) == blob.sha256


@pytest.mark.usefixtures("skopeo")
def test_whisperctl_pulls_what_skopeo_pushed(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 300 * KiB)
    blob = lab.blobs[0]
    env = lab.env(registry)
    digest = oci_client.push_file(registry.host, REPO, blob.name, lab.model_path(blob), tmp_path, env)
    assert digest == f"sha256:{blob.sha256}"

    fresh = tmp_path / "fresh"
    got = pull(lab, registry, blob.name, fresh)
    assert got.returncode == 0, got.stderr
    assert lab.final_files(fresh) == {blob.filename: blob.sha256}


@pytest.mark.usefixtures("skopeo")
def test_an_exported_oci_layout_is_what_skopeo_copies_to_a_registry(
    tmp_path: Path, registry: Registry
) -> None:
    lab = OciLab(tmp_path, 64 * KiB, 80 * KiB)
    lab.fill()
    layout = tmp_path / "layout"
    exported = lab.run("export", "--oci-layout", str(layout), "--all-cached")
    assert exported.returncode == 0, exported.stderr
    assert (layout / "oci-layout").is_file()
    env = lab.env(registry)
    blob = lab.blobs[1]
    oci_client.skopeo(
        "copy", f"oci:{layout}:{blob.name}", f"docker://{registry.host}/{REPO}:{blob.name}", env=env
    )
    fresh = tmp_path / "fresh"
    got = pull(lab, registry, blob.name, fresh)
    assert got.returncode == 0, got.stderr
    assert lab.final_files(fresh) == {blob.filename: blob.sha256}


def test_plain_http_registry_is_an_explicit_opt_in(tmp_path: Path, plain_registry: Registry) -> None:
    lab = OciLab(tmp_path, 128 * KiB)
    blob = lab.blobs[0]
    lab.fill()
    env = lab.env(plain_registry)
    pushed = lab.run("push", plain_registry.url(REPO), blob.name, env=env)
    assert pushed.returncode == 0, pushed.stderr
    fresh = tmp_path / "fresh"
    got = lab.run("download", "--mirror", plain_registry.url(REPO), blob.name, cache=fresh, env=env)
    assert got.returncode == 0, got.stderr
    assert lab.final_files(fresh) == {blob.filename: blob.sha256}


@pytest.mark.usefixtures("skopeo")
def test_bearer_token_auth_pull_and_push(tmp_path: Path, token_registry: Registry) -> None:
    lab = OciLab(tmp_path, 512 * KiB, 96 * KiB)
    token = token_registry.token_server
    assert token is not None
    env = lab.env(token_registry)
    first = lab.blobs[0]
    oci_client.push_file(token_registry.host, REPO, first.name, lab.model_path(first), tmp_path, env)
    issued = token.issued
    fresh = tmp_path / "fresh"
    got = pull(lab, token_registry, first.name, fresh)
    assert got.returncode == 0, got.stderr
    assert lab.final_files(fresh) == {first.filename: first.sha256}
    assert token.issued > issued
    assert f"repository:{REPO}:pull" in token.requests

    second = lab.blobs[1]
    lab.fill(second)
    pushed = lab.run("push", token_registry.url(REPO), second.name, env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert any(scope.startswith(f"repository:{REPO}:") and "push" in scope for scope in token.requests)
    manifest = oci_client.read_manifest(token_registry.host, REPO, second.name, env)
    assert [layer["digest"] for layer in manifest["layers"]] == [f"sha256:{second.sha256}"]


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line. A failing mirror is followed by the model's own URL (here one on the registry's
    host that answers 404 at once), so a warning "..., trying the next source" may come before it."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert all(line.endswith("trying the next source") for line in lines if line not in errors), result.stderr
    assert len(lines) <= 2, result.stderr
    return errors[0]


@pytest.mark.usefixtures("skopeo")
@pytest.mark.parametrize(
    "case", ["no credentials", "wrong credentials", "no such repository", "blob deleted"]
)
def test_a_failed_pull_is_one_line_exit_3_and_nothing_final(
    tmp_path: Path, registry: Registry, case: str
) -> None:
    lab = OciLab(tmp_path, 256 * KiB, official=registry.base_url + "/official")
    blob = lab.blobs[0]
    env = lab.env(registry)
    oci_client.push_file(registry.host, REPO, blob.name, lab.model_path(blob), tmp_path, env)
    url = registry.url(REPO)
    if case == "no credentials":
        env = lab.env(registry, auth=False)
    elif case == "wrong credentials":
        env["REGISTRY_AUTH_FILE"] = str(
            registry.auth_json(tmp_path / "wrong.json", password="not-the-password")
        )
    elif case == "no such repository":
        url = registry.url("fleet/nothing-here")
    else:
        registry.delete_blob(REPO, f"sha256:{blob.sha256}")
    fresh = tmp_path / "fresh"
    got = lab.run("download", "--mirror", url, blob.name, cache=fresh, env=env)
    assert got.returncode == 3, got.stderr
    line = _one_line(got)
    assert f"127.0.0.1:{registry.port}" in line
    assert registry.password not in got.stderr + got.stdout
    if case == "wrong credentials":
        assert "not-the-password" not in got.stderr + got.stdout
        assert "REGISTRY_AUTH_FILE" in line
    assert lab.final_files(fresh) == {}


def test_offline_with_a_registry_mirror_is_exit_5(tmp_path: Path, registry: Registry) -> None:
    lab = OciLab(tmp_path, 64 * KiB)
    blob = lab.blobs[0]
    fresh = tmp_path / "fresh"
    before = len(registry.requests())
    got = lab.run(
        "download", "--offline", "--mirror", registry.url(REPO), blob.name, cache=fresh, env=lab.env(registry)
    )
    assert got.returncode == 5, got.stderr
    _one_line(got)
    assert lab.final_files(fresh) == {}
    assert len(registry.requests()) == before


def test_a_failed_push_names_the_registry_and_the_credential_source(
    tmp_path: Path, registry: Registry
) -> None:
    lab = OciLab(tmp_path, 64 * KiB)
    blob = lab.blobs[0]
    lab.fill()
    env = lab.env(registry)
    env["REGISTRY_AUTH_FILE"] = str(registry.auth_json(tmp_path / "wrong.json", password="not-the-password"))
    got = lab.run("push", registry.url(REPO), blob.name, env=env)
    assert got.returncode == 3, got.stderr
    line = _one_line(got)
    assert f"127.0.0.1:{registry.port}" in line
    assert "REGISTRY_AUTH_FILE" in line
    assert "not-the-password" not in got.stderr + got.stdout
    assert not [line for line in registry.requests() if line.method in ("PATCH", "PUT") and line.status < 300]
