"""OCI registry benchmark: whisperctl against nginx and skopeo, all on 127.0.0.1, same machine, same run.

    .venv/bin/python bench/oci.py                 # a large-v3-sized blob (3,087,371,615 bytes)
    .venv/bin/python bench/oci.py --size 64m      # a quick run

One file of pseudo-random bytes (bench/download.py's generator; reused when present) sits in an export tree
``<work>/tree/<sha256>/<name>.pt``. The CNCF distribution registry (Debian's ``docker-registry``, started as
tests/registry.py starts it: TLS from a private CA, htpasswd) holds it as an artifact pushed by skopeo; nginx
(tests/nginx.py) serves the tree over TLS with the same certificate, and a second nginx server is a reverse
proxy in front of the registry with ``limit_rate`` per connection (``--rate``), as is the capped tree server.

Rows, each in its own process with its peak RSS from ``wait4``, the clock stopping on a verified file:

- pull: ``whisperctl download --mirror oci://...`` into a fresh cache (registry) against the same command
  with ``--mirror https://...`` (nginx over the export tree); ``skopeo copy docker://... dir:`` followed by
  ``sha256sum``; each uncapped and capped;
- push: ``whisperctl push`` against ``skopeo copy oci:... docker://...`` of the same blob, each into a fresh,
  empty registry.

Targets: registry within 1.2x of nginx; at least 2x faster than skopeo + sha256sum uncapped, 4x capped; push
no slower than skopeo; whisperctl's peak RSS under 150 MiB. Results go to bench/results/oci.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import string
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from common import busy_cpu, dist_version, fmt, ratio, read_file, source_fingerprint, wait_for_idle
from download import BenchError, Proc, _write_test_file, clean_env, measure, parse_rate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # tests/registry.py, tests/nginx.py: the tests start these servers the same way

from tests.nginx import ensure_nginx, free_port  # noqa: E402
from tests.nginx import run as run_nginx  # noqa: E402
from tests.oci_client import write_layout  # noqa: E402
from tests.registry import Pki, Registry, ensure_binary, make_pki  # noqa: E402
from tests.registry import serve as serve_registry  # noqa: E402

MiB = 1024 * 1024
LARGE_V3 = 3_087_371_615
NAME = "bench-oci"
REPO = "bench/whisper"
RSS_LIMIT = 150 * MiB

NGINX_CONF = """${user}
worker_processes 2;
daemon off;
pid ${prefix}/nginx.pid;
events { worker_connections 1024; }
http {
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    server_tokens off;
    client_body_temp_path ${prefix}/tmp/body;
    proxy_temp_path ${prefix}/tmp/proxy;
    fastcgi_temp_path ${prefix}/tmp/fastcgi;
    uwsgi_temp_path ${prefix}/tmp/uwsgi;
    scgi_temp_path ${prefix}/tmp/scgi;
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    server { listen 127.0.0.1:${tree} ssl; root ${root}; }
    server { listen 127.0.0.1:${tree_capped} ssl; root ${root}; limit_rate ${rate}; }
    server {
        listen 127.0.0.1:${registry_capped} ssl;
        client_max_body_size 0;
        location / {
            proxy_pass https://127.0.0.1:${registry};
            proxy_http_version 1.1;
            proxy_set_header Host $$http_host;
            proxy_set_header Connection "";
            # limit_rate caps what nginx sends to the client, which an unbuffered proxy bypasses: buffer
            # in memory only (no temp file), so that the registry is read as fast as the client drains.
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_request_buffering off;
            limit_rate ${rate};
        }
    }
}
"""


@dataclass
class Row:
    action: str  # "pull" or "push"
    setting: str  # "uncapped" or "capped"
    tool: str
    seconds: float
    rss_bytes: int
    cpu_s: float
    others_cpu_s: float  # CPU of every other process meanwhile: the servers, the kernel's threads
    runs: list[float]


@dataclass(frozen=True)
class Lab:
    work: Path
    size: int
    sha256: str
    tree_file: Path
    registry_file: Path
    cache: Path  # holds the verified model, for whisperctl push
    pki: Pki
    rate: int
    env: dict[str, str]


def parse_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a size like 64m, 1g or 3087371615 (bytes)")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}[match.group(2).lower()]


def whisperctl(lab: Lab, cache: Path, *args: str) -> list[str]:
    registry = str(lab.registry_file)
    return [sys.executable, "-m", "whisperctl", "--cache-dir", str(cache), "--registry", registry, *args]


def prepare(work: Path, size: int, rate: int) -> Lab:
    """The test file in an export tree (generated once per size), the registry file, and a filled cache."""
    tree = work / "tree"
    tree.mkdir(parents=True, exist_ok=True)
    stamp = work / f"file-{size}.sha256"
    sha = stamp.read_text().strip() if stamp.is_file() else ""
    if not sha or not (tree / sha / f"{NAME}.pt").is_file():
        scratch = work / f"{NAME}.tmp"
        print(f"writing a {size:,}-byte test file...", file=sys.stderr)
        sha = _write_test_file(scratch, NAME, size)
        (tree / sha).mkdir(exist_ok=True)
        scratch.replace(tree / sha / f"{NAME}.pt")
        stamp.write_text(sha)
    tree_file = tree / sha / f"{NAME}.pt"
    registry_file = work / "models.toml"
    # The model's own URL is a dead port: a row that fails over it fails, it never measures another source.
    registry_file.write_text(
        f'[models.{NAME}]\nurl = "http://127.0.0.1:9/{NAME}.pt"\nsha256 = "{sha}"\nsize = {size}\n', "utf-8"
    )
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    pki = make_pki(work / "pki")
    env["SSL_CERT_FILE"] = str(pki.ca_file)
    lab = Lab(work, size, sha, tree_file, registry_file, work / "cache", pki, rate, env)
    if not (lab.cache / f"{NAME}.pt").is_file():
        proc = measure(
            whisperctl(lab, lab.cache, "download", "--mirror", str(tree), NAME),
            timeout=3600,
            logs=_logs(lab, "fill"),
            env=env,
        )
        _check(proc, "whisperctl download (filling the cache)")
    return lab


def run_tool(cmd: Sequence[str], *, timeout: float, logs: Path, env: dict[str, str]) -> Proc:
    """``measure`` (wall time, CPU) with the peak RSS taken by GNU time's own ``wait4`` on the tool.

    A child's ``ru_maxrss`` from Python's own ``wait4`` starts at the benchmark's RSS (the forked or vforked
    memory is counted before ``exec``): some 50 MiB, whatever the tool. ``/usr/bin/time``, a small
    process, forks the tool itself, so its figure is the tool's own.
    """
    if not shutil.which("time", path="/usr/bin:/bin"):
        raise BenchError("GNU time is missing: apt-get install time")
    report = logs / "rss.txt"
    busy0 = busy_cpu()
    proc = measure(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *cmd], timeout=timeout, logs=logs, env=env
    )
    others = max(0.0, busy_cpu() - busy0 - proc.cpu)  # the servers' (registry, nginx) and the kernel's
    lines = report.read_text("utf-8").split() if report.is_file() else []
    if not lines or not lines[-1].isdigit():
        raise BenchError(f"{cmd[0]}: no peak RSS from /usr/bin/time ({' '.join(lines)[-200:]})")
    return dataclasses.replace(proc, rss=int(lines[-1]) * 1024, background=others)  # time reports KiB


def _logs(lab: Lab, name: str) -> Path:
    path = lab.work / "logs" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check(proc: Proc, what: str) -> None:
    if proc.returncode != 0:
        raise BenchError(
            f"{what} exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-1500:]}"
        )


def _auth_file(lab: Lab, reg: Registry, *hosts: str) -> Path:
    """One containers-auth.json with the registry's credentials for each of ``hosts`` (the proxy's too)."""
    path = reg.auth_json(lab.work / "auth-one.json")
    entry = json.loads(path.read_text())["auths"][reg.host]
    out = lab.work / "auth.json"
    out.write_text(json.dumps({"auths": {host: entry for host in hosts}}), "utf-8")
    return out


@contextmanager
def nginx(lab: Lab, registry_port: int) -> Iterator[dict[str, int]]:
    ports = {"tree": free_port(), "tree_capped": free_port(), "registry_capped": free_port()}
    prefix = lab.work / "nginx"
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    conf = string.Template(NGINX_CONF).substitute(
        user="user root;" if os.geteuid() == 0 else "",
        prefix=prefix,
        cert=lab.pki.cert,
        key=lab.pki.key,
        root=lab.work / "tree",
        rate=lab.rate,
        registry=registry_port,
        **ports,
    )
    with run_nginx(ensure_nginx(), prefix, conf, ports.values()):
        yield ports


def _timeout(lab: Lab) -> float:
    return 120 + 4 * lab.size / lab.rate


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def _before_run(lab: Lab, *served: Path) -> None:
    # Served from memory, for every tool alike: the export tree's file and the registry's copy of the blob
    # (this VM pages out memory left idle for 30 s).
    for path in (lab.tree_file, *served):
        read_file(path)
    os.sync()
    wait_for_idle(20)


def pull_whisperctl(lab: Lab, mirror: str, env: dict[str, str], label: str, blob: Path) -> Proc:
    cache = _fresh(lab.work / "pulled-cache")
    _before_run(lab, blob)
    proc = run_tool(
        whisperctl(lab, cache, "download", "--mirror", mirror, NAME),
        timeout=_timeout(lab),
        logs=_logs(lab, label),
        env=env,
    )
    _check(proc, f"whisperctl download --mirror {mirror}")
    if not (cache / f"{NAME}.pt").is_file():
        raise BenchError(f"whisperctl download --mirror {mirror} left no {NAME}.pt")
    shutil.rmtree(cache)
    return proc


def pull_skopeo(lab: Lab, host: str, env: dict[str, str], label: str, blob: Path) -> Proc:
    dest = _fresh(lab.work / "pulled-skopeo")
    _before_run(lab, blob)
    logs = _logs(lab, label)
    copy = run_tool(
        [ensure_binary("skopeo"), "copy", f"docker://{host}/{REPO}:{NAME}", f"dir:{dest}"],
        timeout=_timeout(lab),
        logs=logs,
        env=env,
    )
    _check(copy, "skopeo copy (pull)")
    check = run_tool(["sha256sum", str(dest / lab.sha256)], timeout=_timeout(lab), logs=logs, env=env)
    _check(check, "sha256sum")
    if check.stdout.split()[:1] != [lab.sha256]:
        raise BenchError(f"sha256sum after skopeo: {check.stdout.strip()}, expected {lab.sha256}")
    shutil.rmtree(dest)
    both = Proc(
        copy.seconds + check.seconds,
        max(copy.rss, check.rss),
        copy.cpu + check.cpu,
        copy.background + check.background,
        0,
        "",
        "",
    )
    return both


def push_whisperctl(lab: Lab, reg: Registry, env: dict[str, str]) -> Proc:
    _before_run(lab)
    cmd = whisperctl(lab, lab.cache, "push", reg.url(REPO), NAME)
    proc = run_tool(cmd, timeout=_timeout(lab), logs=_logs(lab, "push-whisperctl"), env=env)
    _check(proc, "whisperctl push")
    return proc


def push_skopeo(lab: Lab, reg: Registry, env: dict[str, str]) -> Proc:
    layout = _fresh(lab.work / "layout")
    write_layout(layout, lab.tree_file, NAME, {"name": NAME})
    _before_run(lab)
    cmd = [ensure_binary("skopeo"), "copy", f"oci:{layout}:{NAME}", f"docker://{reg.host}/{REPO}:{NAME}"]
    proc = run_tool(cmd, timeout=_timeout(lab), logs=_logs(lab, "push-skopeo"), env=env)
    _check(proc, "skopeo copy (push)")
    return proc


def _row(action: str, setting: str, tool: str, procs: list[Proc]) -> Row:
    runs = [p.seconds for p in procs]
    return Row(
        action,
        setting,
        tool,
        statistics.median(runs),
        max(p.rss for p in procs),
        statistics.median(p.cpu for p in procs),
        statistics.median(p.background for p in procs),
        runs,
    )


def run_pushes(lab: Lab, repeat: int) -> list[Row]:
    """Each push into a fresh, empty registry: nothing to skip, nothing to mount."""
    procs: dict[str, list[Proc]] = {"whisperctl": [], "skopeo": []}
    for i in range(repeat):
        for tool, push in (("skopeo", push_skopeo), ("whisperctl", push_whisperctl)):
            root = _fresh(lab.work / f"push-registry-{tool}-{i}")
            with serve_registry(root, ca=lab.pki) as reg:
                env = {**lab.env, "REGISTRY_AUTH_FILE": str(_auth_file(lab, reg, reg.host))}
                procs[tool].append(push(lab, reg, env))
            shutil.rmtree(root)
    return [_row("push", "uncapped", tool, p) for tool, p in procs.items()]


def run_pulls(lab: Lab, repeat: int) -> list[Row]:
    rows = []
    root = lab.work / "registry"
    with ExitStack() as stack:
        reg = stack.enter_context(serve_registry(_fresh(root), ca=lab.pki))
        ports = stack.enter_context(nginx(lab, reg.port))
        capped_host = f"127.0.0.1:{ports['registry_capped']}"
        env = {**lab.env, "REGISTRY_AUTH_FILE": str(_auth_file(lab, reg, reg.host, capped_host))}
        write_layout(_fresh(lab.work / "layout"), lab.tree_file, NAME, {"name": NAME})
        seed = run_tool(
            [
                ensure_binary("skopeo"),
                "copy",
                f"oci:{lab.work / 'layout'}:{NAME}",
                f"docker://{reg.host}/{REPO}:{NAME}",
            ],
            timeout=_timeout(lab),
            logs=_logs(lab, "seed"),
            env=env,
        )
        _check(seed, "skopeo copy (seeding the registry)")
        blob = reg.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / lab.sha256[:2] / lab.sha256
        blob /= "data"
        if not blob.is_file():
            raise BenchError(f"the registry's copy of the blob is not at {blob}")
        for setting, reg_host, tree_port in (
            ("uncapped", reg.host, ports["tree"]),
            ("capped", capped_host, ports["tree_capped"]),
        ):
            runs: dict[str, list[Proc]] = {
                "whisperctl registry": [],
                "whisperctl nginx": [],
                "skopeo + sha256sum": [],
            }
            for _ in range(repeat):
                runs["whisperctl registry"].append(
                    pull_whisperctl(lab, f"oci://{reg_host}/{REPO}", env, f"pull-{setting}-oci", blob)
                )
                runs["whisperctl nginx"].append(
                    pull_whisperctl(lab, f"https://127.0.0.1:{tree_port}", env, f"pull-{setting}-nginx", blob)
                )
                runs["skopeo + sha256sum"].append(
                    pull_skopeo(lab, reg_host, env, f"pull-{setting}-skopeo", blob)
                )
            rows += [_row("pull", setting, tool, p) for tool, p in runs.items()]
    shutil.rmtree(root, ignore_errors=True)
    return rows


def _find(rows: list[Row], action: str, setting: str, tool: str) -> Row | None:
    return next((r for r in rows if (r.action, r.setting, r.tool) == (action, setting, tool)), None)


def targets(rows: list[Row]) -> list[tuple[bool, str]]:
    out = []

    def secs(action: str, setting: str, tool: str) -> float | None:
        row = _find(rows, action, setting, tool)
        return row.seconds if row else None

    for setting in ("uncapped", "capped"):
        oci = secs("pull", setting, "whisperctl registry")
        vs_nginx = ratio(oci, secs("pull", setting, "whisperctl nginx"))
        vs_skopeo = ratio(secs("pull", setting, "skopeo + sha256sum"), oci)
        goal = 2.0 if setting == "uncapped" else 4.0
        out.append(
            (
                vs_nginx is not None and vs_nginx <= 1.2,
                f"pull {setting}: registry/nginx = {fmt(vs_nginx, '.2f')}x (target <= 1.2x)",
            )
        )
        out.append(
            (
                vs_skopeo is not None and vs_skopeo >= goal,
                f"pull {setting}: skopeo+sha256sum/whisperctl = {fmt(vs_skopeo, '.2f')}x"
                f" (target >= {goal:.0f}x)",
            )
        )
    push = ratio(secs("push", "uncapped", "whisperctl"), secs("push", "uncapped", "skopeo"))
    out.append(
        (push is not None and push <= 1.0, f"push: whisperctl/skopeo = {fmt(push, '.2f')}x (target <= 1.0x)")
    )
    worst = max((r.rss_bytes for r in rows if r.tool.startswith("whisperctl")), default=None)
    out.append(
        (
            worst is not None and worst < RSS_LIMIT,
            f"whisperctl peak RSS {fmt(worst and worst / MiB, '.0f', ' MiB')} (target < 150 MiB)",
        )
    )
    return out


def render(rows: list[Row], lab: Lab, info: dict[str, str]) -> str:
    lines = [
        "# OCI registry benchmark (bench/oci.py)",
        "",
        f"File: {lab.size:,} bytes; cap: {lab.rate / MiB:.0f} MiB/s per connection; "
        f"{' '.join(f'{k}: {v};' for k, v in info.items())}",
        "",
        "| action | setting | tool | seconds (median) | MB/s | peak RSS | CPU s | others' CPU s | runs |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rate = lab.size / r.seconds / 1e6 if r.seconds else None
        runs = ", ".join(f"{s:.1f}" for s in r.runs)
        lines.append(
            f"| {r.action} | {r.setting} | {r.tool} | {r.seconds:.2f} | {fmt(rate, '.0f')} | "
            f"{r.rss_bytes / MiB:.0f} MiB | {r.cpu_s:.1f} | {r.others_cpu_s:.1f} | {runs} |"
        )
    lines += ["", "Targets:", ""]
    lines += [f"- {'met' if ok else 'MISSED'}: {text}" for ok, text in targets(rows)]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=parse_size, default=LARGE_V3, help="blob size (default: large-v3's)")
    parser.add_argument("--rate", type=parse_rate, default=parse_rate("50m"), help="per-connection cap (50m)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "oci")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "oci", help="stem of .md and .json")
    parser.add_argument("--no-push", action="store_true", help="leave out the push rows")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        for binary in ("docker-registry", "htpasswd", "skopeo"):
            ensure_binary(binary)
        lab = prepare(args.work, args.size, args.rate)
        t0 = time.monotonic()
        rows = run_pulls(lab, args.repeat)
        if not args.no_push:
            rows += run_pushes(lab, args.repeat)
    except BenchError as exc:
        print(f"bench/oci.py: {exc}", file=sys.stderr)
        return 1
    info = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "whisperctl": f"{dist_version('whisperctl')} (source {source_fingerprint()})",
        "wall": f"{time.monotonic() - t0:.0f} s",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = render(rows, lab, info)
    args.output.with_suffix(".md").write_text(text, "utf-8")
    payload = {"size": lab.size, "rate": lab.rate, "info": info, "rows": [asdict(r) for r in rows]}
    payload["targets"] = [{"met": ok, "text": t} for ok, t in targets(rows)]
    args.output.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", "utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
