"""The download decision on its own: a table of what is on disk and what is asked, and what to do."""

from __future__ import annotations

import pytest

from whisperctl.fetch.decision import Action, Ask, Decision, OnDisk, decide

SERVE, HASH, LOCK, FETCH, NOT_CACHED = Action.SERVE, Action.HASH, Action.LOCK, Action.FETCH, Action.NOT_CACHED

ONLINE = Ask()
OFFLINE = Ask(offline=True)
OFFLINE_DIR = Ask(offline=True, offline_sources=True)
LOCKED = Ask(locked=True)
NO_LOCK = Ask(locked=False)  # a filesystem without working locks

CASES: list[tuple[str, OnDisk, Ask, Decision]] = [
    # a verified file costs nothing, before any lock
    ("verified", OnDisk("verified"), ONLINE, Decision(SERVE)),
    ("verified, offline", OnDisk("verified"), OFFLINE, Decision(SERVE)),
    ("verified, under the lock", OnDisk("verified"), LOCKED, Decision(SERVE)),
    # leftovers beside a good file: removed only under the lock
    ("verified with leftovers", OnDisk("verified", leftovers=True), ONLINE, Decision(LOCK)),
    ("leftovers, locked", OnDisk("verified", leftovers=True), LOCKED, Decision(SERVE, clean=True)),
    ("leftovers, no lock possible", OnDisk("verified", leftovers=True), NO_LOCK, Decision(SERVE)),
    # a file found in place is hashed once, then served or replaced
    ("unhashed", OnDisk("unhashed"), ONLINE, Decision(HASH)),
    ("unhashed, offline", OnDisk("unhashed"), OFFLINE, Decision(HASH)),
    ("unhashed, matching", OnDisk("unhashed", matched=True), ONLINE, Decision(SERVE)),
    ("unhashed, matching, offline", OnDisk("unhashed", matched=True), OFFLINE, Decision(SERVE)),
    ("unhashed, wrong", OnDisk("unhashed", matched=False), ONLINE, Decision(LOCK)),
    ("unhashed, wrong, locked", OnDisk("unhashed", matched=False), LOCKED, Decision(FETCH)),
    ("unhashed, wrong, offline", OnDisk("unhashed", matched=False), OFFLINE, Decision(NOT_CACHED)),
    # nothing usable: fetch under the lock, resuming a partial file
    ("absent", OnDisk("absent"), ONLINE, Decision(LOCK)),
    ("absent, locked", OnDisk("absent"), LOCKED, Decision(FETCH)),
    ("absent, no lock possible", OnDisk("absent"), NO_LOCK, Decision(FETCH)),
    ("partial, locked", OnDisk("absent", partial=True), LOCKED, Decision(FETCH, resume=True)),
    ("partial, no lock possible", OnDisk("absent", partial=True), NO_LOCK, Decision(FETCH, resume=True)),
    # offline: only a source that works offline may be used
    ("absent, offline", OnDisk("absent"), OFFLINE, Decision(NOT_CACHED)),
    ("partial, offline", OnDisk("absent", partial=True), OFFLINE, Decision(NOT_CACHED)),
    ("absent, offline with a directory", OnDisk("absent"), OFFLINE_DIR, Decision(LOCK)),
    (
        "absent, offline with a directory, locked",
        OnDisk("absent"),
        Ask(offline=True, offline_sources=True, locked=True),
        Decision(FETCH),
    ),
    # --force: whatever is there, fetch again (the old file stays until the new one is verified)
    ("force, verified", OnDisk("verified"), Ask(force=True), Decision(LOCK)),
    ("force, verified, locked", OnDisk("verified"), Ask(force=True, locked=True), Decision(FETCH)),
    ("force, unhashed: no hashing", OnDisk("unhashed"), Ask(force=True, locked=True), Decision(FETCH)),
    (
        "force, partial, locked",
        OnDisk("verified", partial=True, leftovers=True),
        Ask(force=True, locked=True),
        Decision(FETCH, resume=True),
    ),
    ("force, offline", OnDisk("verified"), Ask(force=True, offline=True), Decision(NOT_CACHED)),
    (
        "force, offline with a directory",
        OnDisk("verified"),
        Ask(force=True, offline=True, offline_sources=True, locked=True),
        Decision(FETCH),
    ),
]


@pytest.mark.parametrize(("disk", "ask", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(disk: OnDisk, ask: Ask, expected: Decision) -> None:
    assert decide(disk, ask) == expected


def test_every_action_is_reachable() -> None:
    assert {expected.action for _, _, _, expected in CASES} == set(Action)


def test_a_hash_is_asked_for_at_most_once() -> None:
    """After the hash, the decision never asks for it again, whatever the digest said."""
    for matched in (True, False):
        for ask in (ONLINE, OFFLINE, LOCKED, NO_LOCK, OFFLINE_DIR):
            assert decide(OnDisk("unhashed", matched=matched), ask).action is not HASH
