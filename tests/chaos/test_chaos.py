"""The chaos suite: seeded random faults of the network, the disk and the process (see kinds.py), each
trial checking whisperctl's promise (see lab.py) and then that a plain re-run gives a verified file."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from .figures import Tally
from .kinds import KINDS
from .lab import Trial, TrialFailure


def test_chaos(trial_plan: tuple[int, int, str], tmp_path: Path, isolated_env: Path, tally: Tally) -> None:
    seed, index, kind = trial_plan
    trial = Trial(index, kind, random.Random(f"{seed}/{index}"), tmp_path, isolated_env)
    t0 = time.monotonic()
    failure: str | None = None
    try:
        KINDS[kind](trial)
        trial.heal_and_rerun()
    except TrialFailure as exc:
        failure = str(exc)
    except BaseException as exc:
        failure = f"the trial itself failed: {exc!r}"
        raise
    finally:
        trial.close()
        tally.add(trial, time.monotonic() - t0, failure)
    problems = [*trial.problems(), *([failure] if failure else [])]
    assert not problems, f"trial {index} ({kind}, CHAOS_SEED={seed}): " + "\n".join(problems)
    shutil.rmtree(trial.cache_dir, ignore_errors=True)  # 1,000 trials of a few MB each add up
