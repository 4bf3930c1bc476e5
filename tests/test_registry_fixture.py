"""The registry fixtures themselves (tests/registry.py): they start, and they authenticate as configured."""

from __future__ import annotations

import hashlib
import ssl

import httpx

from .registry import Registry


def _trust(reg: Registry) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(reg.ca_file))


def test_basic_registry_wants_credentials(registry: Registry) -> None:
    assert registry.url("models") == f"oci://127.0.0.1:{registry.port}/models"
    with httpx.Client(verify=_trust(registry)) as http:
        r = http.get(registry.base_url + "/v2/")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")
    with registry.client() as http:
        assert http.get("/v2/").status_code == 200
    with httpx.Client(verify=_trust(registry), auth=(registry.username or "", "wrong")) as http:
        assert http.get(registry.base_url + "/v2/").status_code == 401
    lines = registry.requests()
    assert [(line.method, line.path, line.status) for line in lines][-3:] == [
        ("GET", "/v2/", 401),
        ("GET", "/v2/", 200),
        ("GET", "/v2/", 401),
    ]


def test_plain_registry_is_anonymous(plain_registry: Registry) -> None:
    assert plain_registry.url("m").startswith("oci+http://127.0.0.1:")
    with plain_registry.client() as http:
        assert http.get("/v2/").status_code == 200


def test_token_registry_accepts_the_token_servers_jwt(token_registry: Registry) -> None:
    token = token_registry.token_server
    assert token is not None
    with httpx.Client(verify=_trust(token_registry)) as http:
        r = http.get(token_registry.base_url + "/v2/models/tags/list")
        assert r.status_code == 401
        challenge = r.headers["WWW-Authenticate"]
        assert challenge.startswith(f'Bearer realm="{token.realm}"')
        assert 'scope="repository:models:pull"' in challenge
        params = {"service": token.service, "scope": "repository:models:pull"}
        assert http.get(token.realm, params=params).status_code == 401
        auth = (token_registry.username or "", token_registry.password or "")
        answer = http.get(token.realm, params=params, auth=auth).json()
        headers = {"Authorization": f"Bearer {answer['token']}"}
        r = http.get(token_registry.base_url + "/v2/models/tags/list", headers=headers)
    assert r.status_code == 404  # authorised, and the repository does not exist yet
    assert r.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_proxy_registry_reaches_its_upstream(proxy_registry: Registry, token_registry: Registry) -> None:
    blob = b"through the proxy\n"
    registry = token_registry
    with registry.client() as http:
        start = http.post("/v2/models/blobs/uploads/", headers=registry.bearer("repository:models:pull,push"))
        assert start.status_code == 202
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        location = start.headers["Location"]
        put = http.put(
            f"{location}{'&' if '?' in location else '?'}digest={digest}",
            content=blob,
            headers=registry.bearer("repository:models:pull,push"),
        )
        assert put.status_code == 201
    with proxy_registry.client() as http:
        assert http.get(f"/v2/models/blobs/{digest}").content == blob
    assert any(
        line.path == f"/v2/models/blobs/{digest}" and line.status == 200 for line in registry.requests()
    )
