"""The HTTP transfer engine: one URL into one ``.part`` file, in parallel ranges, resumable, hashed live.

A transfer asks for ``Range: bytes=0-`` first. A 206 answer tells the size and that ranges work: the file is
then split into pieces of at most ``piece_size`` that several connections take in order, each written in place
with ``pwrite`` into one preallocated file (:mod:`.plan`). A
:class:`~whisperctl.following.FollowingHasher` hashes the contiguous prefix as it grows, so the digest is
ready moments after the last byte lands.

Every few seconds the data is flushed and a small JSON sidecar (:mod:`.sidecar`) records which bytes are on
disk, so an interrupted transfer resumes only what is missing, after checking with ``If-Range`` that the
server still has the same file. Nothing the server says is believed unchecked (:mod:`.answers`); a transfer
that crawls below the minimum pace (:mod:`.pace`) or keeps failing without progress ends by itself.

The parts: :mod:`.options` (knobs, progress, result), :mod:`.answers` (pure checks of answers), :mod:`.plan`
(segments, taking, frontier), :mod:`.sidecar` (the resume record), :mod:`.pace` (minimum progress),
:mod:`.request` (one ranged GET with its redirects), :mod:`.body` (a body into the file) and :mod:`.engine`
(the run). The engine moves bytes; it neither knows model names nor renames anything: the caller compares the
digest and decides.
"""

from whisperctl.fetch.transfer.engine import fetch_url
from whisperctl.fetch.transfer.options import TransferOptions, TransferProgress, TransferResult
from whisperctl.fetch.transfer.request import Authorizer

__all__ = ["Authorizer", "TransferOptions", "TransferProgress", "TransferResult", "fetch_url"]
