"""prune as a plan, then its execution: the scan writes nothing, the plan says what it frees, and execution
checks each file again under its model's lock."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from whisperctl.api.fleet import plan_prune, prune
from whisperctl.errors import CacheError
from whisperctl.store.prune import STALE_TMP_SECONDS

from .test_fleet import Lab, LockHolder, tree_of

KiB = 1024


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    lab = Lab(tmp_path, 8 * KiB, 12 * KiB, 16 * KiB)
    lab.fill(lab.blobs[0])
    return lab


def old(path: Path) -> Path:
    then = time.time() - 2 * STALE_TMP_SECONDS
    os.utime(path, (then, then))
    return path


def stale_state(lab: Lab) -> dict[str, Path]:
    """One of each kind of stale file."""
    root, state = lab.cache_dir, lab.cache_dir / ".whisperctl"
    (state / "locks").mkdir(exist_ok=True)
    paths = {
        "partial": root / "m1.pt.part",
        "sidecar": root / "m1.pt.part.json",
        "stamp": state / "stamps" / "m2.pt.json",
        "temporary": state / "stamps" / ".m0.pt.json.0123456789ab.tmp",
        "lock": state / "locks" / "gone.pt.lock",
    }
    paths["partial"].write_bytes(b"\0" * 3000)
    paths["sidecar"].write_text("{}")
    paths["stamp"].write_text("{}")
    paths["temporary"].write_bytes(b"t" * 700)
    old(paths["temporary"])
    paths["lock"].write_bytes(b"")
    return paths


def test_the_plan_writes_nothing_and_says_what_it_would_free(lab: Lab) -> None:
    paths = stale_state(lab)
    (lab.cache_dir / "stray.bin").write_bytes(b"?")
    before = tree_of(lab.cache_dir)
    plan = plan_prune(cache_dir=lab.cache_dir, registry=lab.registry)
    assert tree_of(lab.cache_dir) == before  # not even a lock file was made to look
    planned = {i.path for i in plan.items}
    assert set(paths.values()) <= planned
    assert plan.bytes_to_free == sum(i.size_bytes for i in plan.items) >= 3000 + 700 + 2
    assert plan.unknown == (lab.cache_dir / "stray.bin",)
    # Each step is one model file's, its lock last (removed while still held).
    for step in plan.steps:
        kinds = [i.kind for i in step.items]
        assert kinds == sorted(kinds, key=["partial", "temporary", "stamp", "lock"].index)
    # The dry run is the plan printed.
    dry = prune(dry_run=True, cache_dir=lab.cache_dir, registry=lab.registry)
    assert (dry.items, dry.in_use, dry.unknown) == (plan.items, list(plan.in_use), list(plan.unknown))
    table = lab.cli("prune", "--dry-run")
    assert table.exit_code == 0 and f"would remove {paths['partial']}" in table.stdout
    assert "would free" in table.stderr
    assert tree_of(lab.cache_dir) == before
    # Executed, it removes exactly the plan.
    report = plan.execute()
    assert not report.dry_run
    assert {i.path for i in report.items} == planned and report.bytes_freed == plan.bytes_to_free
    assert tree_of(lab.cache_dir) == before - {str(p.relative_to(lab.cache_dir)) for p in planned}
    assert (lab.cache_dir / "stray.bin").exists() and lab.status(lab.blobs[0]) == "verified"
    assert json.loads(lab.cli("prune", "--json").stdout)["removed"] == []  # nothing left to do


def test_execution_checks_each_file_again_under_its_lock(lab: Lab) -> None:
    paths = stale_state(lab)
    plan = plan_prune(cache_dir=lab.cache_dir, registry=lab.registry)
    b2 = lab.blobs[2]
    # Between the plan and its execution: a download of m1 starts, m2 is downloaded (its file is there
    # again, stamped), and the temporary file is written to again.
    with LockHolder(lab.cache_dir, "m1.pt"):
        lab.fill(b2)
        os.utime(paths["temporary"])
        report = plan.execute()
    assert report.in_use == [paths["partial"], paths["sidecar"]]
    removed = {i.path for i in report.items}
    locks = lab.cache_dir / ".whisperctl" / "locks"
    assert removed == {paths["lock"], locks / "m0.pt.lock"}  # only what is still stale (m0's: filled earlier)
    assert (locks / "m2.pt.lock").exists()  # made after the plan: not in it
    for key in ("partial", "sidecar", "stamp", "temporary"):
        assert paths[key].exists(), key
    assert lab.status(b2) == "verified"


def test_execution_skips_what_is_gone_and_reports_sizes_as_removed(lab: Lab) -> None:
    paths = stale_state(lab)
    plan = plan_prune(cache_dir=lab.cache_dir, registry=lab.registry)
    paths["sidecar"].unlink()  # another prune, or the download finished
    paths["partial"].write_bytes(b"\0" * 5000)
    report = plan.execute()
    sizes = {i.path: i.size_bytes for i in report.items}
    assert paths["sidecar"] not in sizes and sizes[paths["partial"]] == 5000


def test_a_state_folder_that_became_a_symlink_is_refused_before_anything_goes(
    lab: Lab, tmp_path: Path
) -> None:
    stale_state(lab)
    plan = plan_prune(cache_dir=lab.cache_dir, registry=lab.registry)
    outside = tmp_path / "outside"
    stamps = lab.cache_dir / ".whisperctl" / "stamps"
    stamps.rename(outside)
    stamps.symlink_to(outside)
    before = tree_of(lab.cache_dir)
    with pytest.raises(CacheError, match="a symlink"):
        plan.execute()
    with pytest.raises(CacheError, match="a symlink"):
        plan_prune(cache_dir=lab.cache_dir, registry=lab.registry)
    assert tree_of(lab.cache_dir) == before and (outside / "m2.pt.json").exists()
    result = lab.cli("prune")
    assert result.exit_code == 6 and result.stderr.count("error:") == 1


def test_an_empty_or_missing_cache_plans_nothing(tmp_path: Path) -> None:
    lab = Lab(tmp_path, 1 * KiB)
    plan = plan_prune(cache_dir=lab.cache_dir, registry=lab.registry)
    assert (plan.steps, plan.in_use, plan.unknown, plan.bytes_to_free) == ((), (), (), 0)
    assert plan.execute().items == [] and not lab.cache_dir.exists()
