"""The checks of a bundle's contents against its own manifest: output names and shapes, the box prior's outputs,
the few-shot references. Files and hashes are :mod:`fgad.bundle.files`; whether this machine can run the engine is
the runtime's (:func:`fgad.runtime.backends.select.check_manifest` runs every check in its order)."""

from __future__ import annotations

import os
from pathlib import Path

from fgad.bundle.references import check_graph_search, check_references
from fgad.bundle.shapes import check_box_prior, check_outputs
from fgad.bundle.spec import MANIFEST_FILE, Manifest

__all__ = ["check_contents"]


def check_contents(manifest: Manifest, bundle_dir: str | os.PathLike[str]) -> None:
    """Output names and shapes vs ``input.size``/``grid``/``box_prior``, and ``references.npz``; raises BundleError."""
    root = Path(bundle_dir)
    check_outputs(manifest, root / MANIFEST_FILE)
    check_box_prior(manifest, root / MANIFEST_FILE)
    check_references(manifest, root)
    check_graph_search(manifest, root / MANIFEST_FILE)
