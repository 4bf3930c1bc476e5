"""An OCI image layout as a source: a directory with an ``oci-layout`` file (``whisperctl export
--oci-layout``, ``skopeo copy ... oci:DIR:TAG``, ``oras cp --to-oci-layout``), where a model's file is the
blob ``blobs/sha256/<its sha256>``; copied and hashed like any directory mirror, usable offline."""

from __future__ import annotations

from whisperctl.fetch.sources.directory import DirectoryMirror
from whisperctl.models.registry import ModelSpec
from whisperctl.store.oci_layout import blob_path

__all__ = ["OCILayoutMirror"]


class OCILayoutMirror(DirectoryMirror):
    """A model is the blob named by its digest: no tag or manifest is needed to find it."""

    def locate(self, spec: ModelSpec) -> str:
        return str(blob_path(self.directory, spec.sha256))
