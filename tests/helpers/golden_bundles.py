"""Bundles written by the tiny models with fixed seeds, and what of them must never change unnoticed.

``tests/bundle/golden/`` holds, for each variant of :data:`VARIANTS`, the ``manifest.json`` and the
graph's outputs on one fixed input (``outputs.npz``) of a bundle written before the package layout
changed (``python -m tests.helpers.golden_bundles tests/bundle/golden`` regenerates them; do that only
for an intended change of the bundles, and say so in the commit). ``tests/bundle/test_golden.py``
writes the same bundles with the current code and compares.

Compared exactly: every manifest field except ``created`` (a timestamp) and the sha256 of the ONNX
files, whose bytes record the Python module paths of the exporting code (node names and metadata),
and of ``references.npz``, which records the reference images' paths (the scratch folder differs per
run; paths in the manifest are written relative to it). The ONNX graph itself is compared through
its outputs (bit-identical), its node list and a digest of its initializers; ``references.npz``
through a digest of its arrays.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Manifest keys that may differ between two writes of the same bundle.
VOLATILE_KEYS = ("created",)
SEED = 3
INPUT_SEED = 11


def _synthetic_refs(root: Path, class_name: str) -> list[Path]:
    from fgad.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(root, classes=(class_name,), n_train_good=2, n_test_good=1, n_test_defect=1,
                                  image_size=112, seed=0)
    return sorted((data / class_name / "train" / "good").glob("*.png"))


def _filo_model(box_prior: str = "none"):  # noqa: ANN202
    from fgad.config import load_config
    from fgad.methods.filo.build import build_model

    mini = {
        "prompts": {"banks": ["synthetic"]},
        "heads": {"linear_layers": [2, 4], "mdci_layers": [3, 4], "mdci_kernels": [[3, 3], [1, 5]]},
        "fewshot": {"memory_layers": [2, 4]},
        "post": {"box_prior": box_prior},
    }
    model = build_model(load_config("tiny-test", {"model": mini}).model, seed=SEED)
    model.mdci.randomize_offsets(SEED)
    return model.eval()


def _fgad_model():  # noqa: ANN202
    from fgad.config import load_config
    from fgad.methods.finegrained.captions.schema import CaptionRecord, Entity
    from fgad.methods.finegrained.mllp import build_mllp_texts
    from fgad.methods.finegrained.model import build_finegrained

    record = CaptionRecord(
        class_name="mesh", foreground="mesh", background="gray",
        entities=(Entity(name="wires", number="many", location="throughout", direction="", color="silver",
                         texture="woven", shape="lattice", caption="Silver wires are woven throughout the mesh."),),
        relation="The wires cross each other at right angles.", caption="A woven metal mesh filling the frame.",
    )
    # the golden bundle predates half-pixel upsampling and the closing full stops: build that model on purpose
    cfg = load_config("fgad-tiny", {"model": {"finegrained": {"align_corners": True}}}).model
    texts = build_mllp_texts(record, ("with a tear", "with a dent"), seed=111, full_stop=False)
    return build_finegrained(cfg, texts, seed=SEED).eval()


def _write(out: Path, model: Any, class_name: str, refs: list[Path] | None, **kwargs: Any) -> Path:
    from fgad.export.bundle import export_bundle

    return export_bundle(out, model, model.cfg, class_name, refs, **kwargs)


def _filo_frozen(out: Path, work: Path) -> Path:
    return _write(out, _filo_model(), "tile", _synthetic_refs(work, "tile"), checkpoint_meta={"pretrained": None})


def _filo_bank_objectness(out: Path, work: Path) -> Path:
    return _write(out, _filo_model("objectness"), "tile", None, text_mode="bank", deform="onnx",
                  checkpoint_meta={"pretrained": None})


def _finegrained(out: Path, work: Path) -> Path:
    return _write(out, _fgad_model(), "mesh", _synthetic_refs(work, "mesh"), checkpoint_meta={"pretrained": None})


#: name -> writer(out_dir, scratch_dir) -> bundle folder
VARIANTS: dict[str, Callable[[Path, Path], Path]] = {
    "filo_frozen": _filo_frozen,
    "filo_bank_objectness": _filo_bank_objectness,
    "finegrained": _finegrained,
}


def fixed_input(manifest: dict[str, Any]) -> np.ndarray:
    size = int(manifest["input"]["size"])
    return np.random.default_rng(INPUT_SEED).standard_normal((1, 3, size, size)).astype(np.float32)


def graph_outputs(bundle: Path) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    manifest = json.loads((bundle / "manifest.json").read_text())
    session = ort.InferenceSession(str(bundle / manifest["engine"]["file"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: fixed_input(manifest)})
    return dict(zip(names, values, strict=True))


def graph_summary(bundle: Path) -> dict[str, Any]:
    """Op types in node order, and a digest of every initializer's name, dtype, shape and bytes."""
    import onnx
    from onnx import numpy_helper

    manifest = json.loads((bundle / "manifest.json").read_text())
    model = onnx.load(str(bundle / manifest["engine"]["file"]))
    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return {
        "ops": [f"{n.domain}::{n.op_type}" for n in model.graph.node],
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "opset": {o.domain: o.version for o in model.opset_import},
        "initializers": digest.hexdigest(),
    }


def _references_digest(bundle: Path) -> str | None:
    path = bundle / "references.npz"
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with np.load(path) as npz:
        for key in sorted(npz.files):
            if key not in ("paths", "fingerprint"):  # metadata: where the images were, which model made them
                digest.update(key.encode())
                digest.update(np.ascontiguousarray(npz[key]).tobytes())
    return digest.hexdigest()


def comparable_manifest(bundle: Path, scratch: Path) -> dict[str, Any]:
    """The manifest as the module docstring says it is compared; paths under ``scratch`` become ``<scratch>``."""
    text = (bundle / "manifest.json").read_text().replace(str(scratch), "<scratch>")
    manifest = json.loads(text)
    for key in VOLATILE_KEYS:
        manifest.pop(key, None)
    onnx_file = manifest["engine"]["file"]
    manifest["sha256"] = {k: v for k, v in manifest["sha256"].items()
                          if not k.startswith(onnx_file) and k != "references.npz"}
    manifest["references_arrays"] = _references_digest(bundle)
    return manifest


def write_golden(target: Path, scratch: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, writer in VARIANTS.items():
        bundle = writer(scratch / name / "bundle", scratch / name / "data")
        folder = target / name
        folder.mkdir(exist_ok=True)
        manifest = comparable_manifest(bundle, scratch)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        (folder / "graph.json").write_text(json.dumps(graph_summary(bundle), indent=0) + "\n")
        np.savez_compressed(folder / "outputs.npz", **graph_outputs(bundle))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_golden(Path(sys.argv[1]), Path(tmp))
