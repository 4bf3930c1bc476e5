"""Registry references, credentials from the container tools' auth files and helpers, and the untrusted parts
of the bearer-token dance (the challenge, the realm, the token endpoint's answer)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from pathlib import Path

import httpx
import pytest

from whisperctl.errors import ExitCode, NetworkError, UsageError
from whisperctl.fetch.oci.auth import (
    Challenge,
    find_credentials,
    parse_challenges,
    parse_token,
    token_request,
)
from whisperctl.fetch.oci.client import RegistryClient
from whisperctl.fetch.oci.reference import RegistryRef, parse_oci_url

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def no_auth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)


# -- references --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "repository", "base", "display"),
    [
        ("oci://127.0.0.1:5000/models/whisper", "https", "127.0.0.1", 5000, "models/whisper",
         "https://127.0.0.1:5000", "oci://127.0.0.1:5000/models/whisper"),
        ("oci://Registry.Example.COM/a-b__c.d/e", "https", "registry.example.com", None, "a-b__c.d/e",
         "https://registry.example.com", "oci://registry.example.com/a-b__c.d/e"),
        ("oci+http://[::1]:5000/m/", "http", "::1", 5000, "m", "http://[::1]:5000", "oci+http://[::1]:5000/m"),
        ("OCI+HTTPS://h/m", "https", "h", None, "m", "https://h", "oci://h/m"),
    ],
)  # fmt: skip
def test_references_parse(
    text: str, scheme: str, host: str, port: int | None, repository: str, base: str, display: str
) -> None:
    ref = parse_oci_url(text)
    assert ref == RegistryRef(scheme, host, port, repository)
    assert (ref.base_url, ref.display) == (base, display)
    assert parse_oci_url(ref.display) == ref  # the display form reads back as the same repository


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("oci://h", "no repository"),
        ("oci:///m", "no host"),
        ("oci://h/Models", "not a valid name"),
        ("oci://h/m--", "not a valid name"),
        ("oci://h/a//b", "not a valid name"),
        ("oci://h/" + "a" * 256, "not a valid name"),
        ("oci://h/m:latest", "a tag or digest"),
        ("oci://h/m@sha256:" + "0" * 64, "a tag or digest"),
        ("oci://h/m?x=1", "a query or fragment"),
        ("oci://h:99999/m", "Port out of range"),
        ("oci://h:0/m", "port 0"),
        ("oci://h_x/m", "not a host name"),
        ("oci://[zz::1]/m", "does not appear to be an IPv4 or IPv6 address"),
        ("docker://h/m", "unsupported scheme"),
        ("oci://h/m\x1b[31m", "control characters"),
    ],
)
def test_bad_references_are_usage_errors(text: str, cause: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_oci_url(text)
    message = str(caught.value)
    assert cause in message and "oci://HOST[:PORT]/REPOSITORY" in message
    assert caught.value.exit_code == ExitCode.USAGE
    assert "\x1b" not in message and "\n" not in message


def test_credentials_in_the_url_are_refused_without_showing_them() -> None:
    with pytest.raises(UsageError) as caught:
        parse_oci_url(f"oci://user:{SECRET}@registry.example/m")
    assert SECRET not in str(caught.value) and "docker login" in str(caught.value)


# -- credentials -------------------------------------------------------------------------------------------
def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _write(path: Path, config: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config), "utf-8")
    return path


def test_no_auth_file_is_anonymous(tmp_path: Path) -> None:
    found = find_credentials("r.example:5000", "m", env={}, home=tmp_path)
    assert found.credential is None and found.tried.startswith("none (anonymous")


def test_registry_auth_file_base64_entry(tmp_path: Path) -> None:
    path = _write(tmp_path / "auth.json", {"auths": {"r.example:5000": {"auth": _auth("ann", SECRET)}}})
    found = find_credentials("r.example:5000", "m", env={"REGISTRY_AUTH_FILE": str(path)}, home=tmp_path)
    assert found.credential is not None
    assert (found.credential.username, found.credential.password) == ("ann", SECRET)
    assert found.tried == f"REGISTRY_AUTH_FILE {path}"
    assert SECRET not in repr(found) and SECRET not in found.tried
    assert found.credential.basic() == "Basic " + _auth("ann", SECRET)


def test_files_are_read_in_the_container_tools_order(tmp_path: Path) -> None:
    runtime, home = tmp_path / "run", tmp_path / "home"
    docker = _write(
        home / ".docker" / "config.json", {"auths": {"https://r.example": {"auth": _auth("d", "1")}}}
    )
    podman = _write(runtime / "containers" / "auth.json", {"auths": {"r.example": {"auth": _auth("p", "2")}}})
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    first = find_credentials("r.example", "m", env=env, home=home).credential
    assert first is not None and first.username == "p"  # podman's runtime file before docker's
    podman.unlink()
    second = find_credentials("r.example", "m", env=env, home=home)
    assert second.credential is not None and second.credential.username == "d"
    assert second.tried == f"docker config {docker}"
    # A file that names other registries only: the next file is read.
    _write(runtime / "containers" / "auth.json", {"auths": {"other.example": {"auth": _auth("o", "3")}}})
    third = find_credentials("r.example", "m", env=env, home=home).credential
    assert third is not None and third.username == "d"
    # REGISTRY_AUTH_FILE takes the runtime file's place (containers-auth.json(5)); the others still follow.
    _write(runtime / "containers" / "auth.json", {"auths": {"r.example": {"auth": _auth("p", "2")}}})
    own = _write(tmp_path / "own.json", {"auths": {}})
    fourth = find_credentials("r.example", "m", env={**env, "REGISTRY_AUTH_FILE": str(own)}, home=home)
    assert fourth.credential is not None and fourth.credential.username == "d"


def test_username_password_entries_docker_config_env_and_most_specific_key(tmp_path: Path) -> None:
    config = {
        "auths": {
            "r.example": {"username": "broad", "password": "1"},
            "r.example/team": {"username": "team", "password": "2"},
            "r.example/team/whisper": {"username": "narrow", "password": "3"},
            "r.example:5000": {"username": "port", "password": "4"},
        }
    }
    path = _write(tmp_path / "dc" / "config.json", config)
    env = {"DOCKER_CONFIG": str(path.parent)}

    def user(netloc: str, repository: str) -> str | None:
        found = find_credentials(netloc, repository, env=env, home=tmp_path).credential
        return None if found is None else found.username

    assert user("r.example", "team/whisper") == "narrow"
    assert user("r.example", "team/other") == "team"
    assert user("r.example", "teamx") == "broad"  # a path prefix counts by whole components
    assert user("r.example:5000", "team/whisper") == "port"
    assert user("r.example:5001", "m") is None


def _helper_script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body, "utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_cred_helpers_get_the_server_on_stdin(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    seen = tmp_path / "seen"
    _helper_script(
        bin_dir,
        "test",
        f'[ "$1" = get ] || exit 9\ncat > {seen}\n'
        f'printf \'{{"ServerURL":"r.example:5000","Username":"helped","Secret":"{SECRET}"}}\'\n',
    )
    _write(tmp_path / ".docker" / "config.json", {"credHelpers": {"r.example:5000": "test"}})
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    found = find_credentials("r.example:5000", "m", env=env, home=tmp_path)
    assert found.credential is not None and found.credential.password == SECRET
    assert found.tried == "docker-credential-test"
    assert seen.read_text() == "r.example:5000"


def test_creds_store_is_used_for_an_empty_auths_entry_and_for_unknown_registries(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _helper_script(
        bin_dir,
        "store",
        'read server\ncase "$server" in\n'
        '  https://r.example) printf \'{"Username":"stored","Secret":"x"}\' ;;\n'
        '  *) echo "credentials not found in native keychain"; exit 1 ;;\nesac\n',
    )
    _write(tmp_path / ".docker" / "config.json", {"auths": {"https://r.example": {}}, "credsStore": "store"})
    env = {"PATH": str(bin_dir)}
    found = find_credentials("r.example", "m", env=env, home=tmp_path)
    assert found.credential is not None and found.credential.username == "stored"
    missing = find_credentials("q.example", "m", env=env, home=tmp_path)
    assert missing.credential is None
    assert (
        missing.tried == "docker-credential-store (no credentials: credentials not found in native keychain)"
    )


def test_helpers_that_are_missing_slow_chatty_or_wrong_give_no_credential(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _helper_script(bin_dir, "slow", "/bin/sleep 30\n")
    _helper_script(bin_dir, "chatty", "exec /usr/bin/yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n")
    _helper_script(bin_dir, "garbage", "echo 'not json \x1b[2J'\n")
    _helper_script(bin_dir, "token", 'printf \'{"Username":"<token>","Secret":"refresh"}\'\n')
    env = {"PATH": str(bin_dir)}
    expected = {
        "absent": "docker-credential-absent (not found on PATH)",
        "slow": "docker-credential-slow (no answer within 0.5 s)",
        "chatty": "docker-credential-chatty (an answer over 65,536 bytes, refused)",
        "garbage": "docker-credential-garbage (an answer that is not its JSON)",
        "token": "docker-credential-token (an identity token, which whisperctl does not use; "
        "log in with a password)",
        "../evil": "credential helper '../evil' (not a valid helper name)",
    }
    started = time.monotonic()
    for name, tried in expected.items():
        _write(tmp_path / ".docker" / "config.json", {"credHelpers": {"r.example": name}})
        found = find_credentials("r.example", "m", env=env, home=tmp_path, helper_timeout=0.5)
        assert (found.credential, found.tried) == (None, tried)
    assert time.monotonic() - started < 10  # the slow helper's children were killed, not waited for


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b'{"auths": {"r.example": {"auth": "' + SECRET.encode() + b'"', "not valid JSON (line 1)"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"a": "\x80"}', "not valid JSON (not UTF-8)"),
        (
            b'{"auths": {"r.example": {"auth": "!!' + SECRET.encode() + b'"}}}',
            "not base64 of 'user:password'",
        ),
        (b'{"auths": {"r.example": {"auth": "' + base64.b64encode(b"nocolon") + b'"}}}', "not base64"),
        (b" " * (4 << 20) + b"{}", "not an auth file"),
    ],
)
def test_broken_auth_files_are_one_line_without_the_secret(
    tmp_path: Path, content: bytes, cause: str
) -> None:
    path = tmp_path / "auth.json"
    path.write_bytes(content)
    with pytest.raises(UsageError) as caught:
        find_credentials("r.example", "m", env={"REGISTRY_AUTH_FILE": str(path)}, home=tmp_path)
    message = str(caught.value)
    assert cause in message and str(path) in message and SECRET not in message and "\n" not in message


# -- the challenge, the realm, the token ---------------------------------------------------------------------
def test_challenges_are_parsed() -> None:
    found = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:team/m:pull,push"',
            'Basic realm="a \\"quoted\\" realm", Bearer realm=https://b.example/t,error=invalid_token',
            "Negotiate abc, Digest realm=x",
        ]
    )
    assert found == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.example/token",
                "service": "registry.example",
                "scope": "repository:team/m:pull,push",
            },
        ),
        Challenge("basic", {"realm": 'a "quoted" realm'}),
        Challenge("bearer", {"realm": "https://b.example/t", "error": "invalid_token"}),
    ]


def test_oversized_or_malformed_challenges_are_left_out() -> None:
    assert parse_challenges(['Bearer realm="' + "x" * 5000 + '"']) == []
    assert parse_challenges(["", "   ", "=oops", 'Bearer realm="unclosed']) == [Challenge("bearer", {})]
    assert len(parse_challenges(["Basic"] * 20)) == 8  # at most 8 headers looked at


def _bearer(realm: str, **params: str) -> Challenge:
    return Challenge("bearer", {"realm": realm, **params})


def test_token_request_for_an_https_realm_on_another_host_sends_credentials() -> None:
    wanted = token_request(
        _bearer("https://auth.example/token", service="reg"),
        "https",
        "r.example",
        ["repository:m:pull"],
        "oci://x",
    )
    assert wanted.url == "https://auth.example/token"
    assert wanted.params == [("service", "reg"), ("scope", "repository:m:pull")]
    assert wanted.send_credentials


def test_token_request_over_plain_http_sends_credentials_only_to_the_registry_host() -> None:
    same = token_request(
        _bearer("http://R.example:81/t"), "http", "r.example", ["s"], "oci+http://r.example/m"
    )
    other = token_request(
        _bearer("http://auth.example/t"), "http", "r.example", ["s"], "oci+http://r.example/m"
    )
    assert same.send_credentials and not other.send_credentials
    assert same.params == [("scope", "s")]


@pytest.mark.parametrize(
    ("realm", "cause"),
    [
        ("http://auth.example/t", "plain http for an https registry"),
        ("ftp://auth.example/t", "not an http(s) URL"),
        ("https://user:pw@auth.example/t", "not an http(s) URL without credentials"),
        ("https:///t", "not an http(s) URL"),
        ("", "without a usable realm"),
        ("https://a.example/\x1b[2J", "without a usable realm"),
        ("https://a.example/" + "x" * 3000, "without a usable realm"),
    ],
)
def test_unusable_realms_are_refused(realm: str, cause: str) -> None:
    with pytest.raises(NetworkError) as caught:
        token_request(_bearer(realm), "https", "r.example", ["s"], "oci://r.example/m")
    message = str(caught.value)
    assert cause in message and message.startswith("oci://r.example/m: ")
    assert "\x1b" not in message and len(message) < 400
    assert caught.value.exit_code == ExitCode.NETWORK


def test_tokens_are_read_and_checked() -> None:
    assert parse_token(b'{"token": "abc.def", "expires_in": 300}', "oci://r/m") == "abc.def"
    assert parse_token(b'{"access_token": "xyz"}', "oci://r/m") == "xyz"
    for body, cause in [
        (b"<html>\x1b[31m", "not JSON"),
        (b'{"token": ""}', "has no token"),
        (b'{"token": 5}', "has no token"),
        (b'["token"]', "has no token"),
        (b'{"token": "a b"}', "unusable token"),
        (b'{"token": "a\\r\\nX-Evil: 1"}', "unusable token"),
        (json.dumps({"token": "a" * 20000}).encode(), "unusable token"),
        (b" " * (300 << 10), "refused"),
    ]:
        with pytest.raises(NetworkError) as caught:
            parse_token(body, "oci://r/m")
        assert cause in str(caught.value) and "\x1b" not in str(caught.value)


# -- the client's paths --------------------------------------------------------------------------------------
def test_client_paths_are_the_distribution_apis() -> None:
    http = httpx.AsyncClient()
    client = RegistryClient(parse_oci_url("oci://r.example/team/whisper"), http)
    digest = "sha256:" + "ab" * 32
    assert client.blob_path(digest) == f"/v2/team/whisper/blobs/{digest}"
    assert client.manifest_path("large-v3") == "/v2/team/whisper/manifests/large-v3"
    assert client.manifest_path(digest) == f"/v2/team/whisper/manifests/{digest}"
    assert client.uploads_path() == "/v2/team/whisper/blobs/uploads/"
    assert client.url(client.uploads_path()) == "https://r.example/v2/team/whisper/blobs/uploads/"
    assert (client.pull_scope(), client.push_scope()) == (
        "repository:team/whisper:pull",
        "repository:team/whisper:pull,push",
    )
    for bad in ("sha256:" + "AB" * 32, "sha512:" + "ab" * 64, "../x", ""):
        with pytest.raises(ValueError, match="not a sha256 digest"):
            client.blob_path(bad)
    for bad in ("-tag", "a/b", "x" * 129, "tag\n"):
        with pytest.raises(ValueError, match="not a tag or sha256 digest"):
            client.manifest_path(bad)
    asyncio.run(http.aclose())
