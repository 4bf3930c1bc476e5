"""Shared fixtures: every test runs with its own HOME, XDG dirs and no whisperctl environment variables."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .helpers import Cli
from .httpserver import HTTPServer
from .registry import Pki, Registry, RegistryUnavailableError, ensure_binary, make_pki
from .registry import serve as serve_registry


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME so that no test reads or writes the real ~/.cache/whisper or ~/.config."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)
    for var in list(os.environ):
        if var.startswith("WHISPERCTL_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("COLUMNS", "200")
    return home


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    """A real HTTP/1.1 server on 127.0.0.1 with fault switches (tests/httpserver.py), closed afterwards."""
    with HTTPServer() as srv:
        yield srv


def _unavailable(exc: Exception) -> NoReturn:
    """Skip a test whose registry, skopeo or openssl cannot be had here; in CI (CI=1/true) fail it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the OCI test tools are required in CI: {exc}")
    pytest.skip(f"OCI test tools unavailable: {exc}")


@contextlib.contextmanager
def _registry(root: Path, **kwargs: Any) -> Iterator[Registry]:
    with contextlib.ExitStack() as stack:
        try:
            reg = stack.enter_context(serve_registry(root, **kwargs))
        except RegistryUnavailableError as exc:
            _unavailable(exc)
        yield reg


@pytest.fixture(scope="session")
def oci_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and a certificate for 127.0.0.1, shared by the session's registries."""
    try:
        return make_pki(tmp_path_factory.mktemp("pki"))
    except RegistryUnavailableError as exc:
        _unavailable(exc)


@pytest.fixture(scope="session")
def skopeo() -> str:
    """skopeo, the independent OCI client (tests/oci_client.py), installed from Debian when missing."""
    try:
        return ensure_binary("skopeo")
    except RegistryUnavailableError as exc:
        _unavailable(exc)


@pytest.fixture
def registry(tmp_path: Path, oci_pki: Pki) -> Iterator[Registry]:
    """The CNCF distribution registry on 127.0.0.1: TLS from a private CA, htpasswd basic auth."""
    with _registry(tmp_path / "registry", ca=oci_pki) as reg:
        yield reg


@pytest.fixture
def plain_registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-http anonymous registry (``oci+http://``)."""
    with _registry(tmp_path / "plain-registry", ca=None, auth=None) as reg:
        yield reg


@pytest.fixture
def token_registry(tmp_path: Path, oci_pki: Pki) -> Iterator[Registry]:
    """A TLS registry with bearer-token auth; its realm is a token server of the test."""
    with _registry(tmp_path / "token-registry", ca=oci_pki, auth="token") as reg:
        yield reg


@pytest.fixture
def proxy_registry(tmp_path: Path, oci_pki: Pki, token_registry: Registry) -> Iterator[Registry]:
    """A pull-through proxy (anonymous, TLS) of ``token_registry``, with its credentials.

    Its upstream is the bearer-token registry: distribution 2.8 keys a proxy's credentials by the realm URL
    of the upstream's challenge, which only a token realm is (an htpasswd realm is a name, not a URL).
    """
    with _registry(tmp_path / "proxy-registry", ca=oci_pki, auth=None, upstream=token_registry) as reg:
        yield reg
