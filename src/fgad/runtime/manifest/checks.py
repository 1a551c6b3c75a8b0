"""All the checks made before an engine is created, in their order."""

from __future__ import annotations

import os
from pathlib import Path

from fgad.runtime.manifest.engine import check_engine
from fgad.runtime.manifest.files import check_files
from fgad.runtime.manifest.references import check_references
from fgad.runtime.manifest.shapes import check_box_prior, check_outputs
from fgad.runtime.manifest.spec import MANIFEST_NAME, Manifest

__all__ = ["check_manifest"]


def check_manifest(
    manifest: Manifest,
    bundle_dir: str | os.PathLike[str],
    *,
    backend: str = "auto",
    verify_hashes: bool = True,
) -> None:
    """Everything that can be checked before an engine is created; raises :class:`BundleError`.

    Order: files and sha256 (``verify_hashes=False`` only checks presence), engine kind vs installed backends
    (``backend`` as in :func:`fgad.runtime.backends.select_backend`), output names and shapes vs
    ``input.size``/``grid``, few-shot layers vs ``tokens_<layer>`` outputs, and the references file.
    """
    root = Path(bundle_dir)
    check_files(manifest, root, verify_hashes)
    check_engine(manifest, root, backend)
    check_outputs(manifest, root / MANIFEST_NAME)
    check_box_prior(manifest, root / MANIFEST_NAME)
    check_references(manifest, root)

