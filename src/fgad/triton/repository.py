"""Writing and updating a Triton model repository from fgad bundles (``fgad-triton``).

Two forms (docs/fleet.md):

* ``python``: one python-backend model ``fgad_<class>`` per bundle; the whole torch-free pipeline runs inside
  Triton (:mod:`fgad.triton.python_model`), so its results are ``fgad-run``'s;
* ``ensemble``: the graph as its own model ``fgad_encoder_<fingerprint>`` (``onnxruntime``, ``tensorrt``, or a
  ``python`` stand-in running onnxruntime), a python post step ``fgad_<class>_post`` (few-shot search, fusion,
  smoothing, score) and the ensemble ``fgad_<class>`` wiring them. Bundles whose encoder files are identical
  (the same weights fingerprint, from the manifest's sha256) share one encoder model.

Versions: a re-export of a class writes version N+1 (``1/``, ``2/``, ...); a bundle equal to the newest version
(same manifest digest) is left alone unless ``force``. Each version is built in a staging folder next to the
repository (never inside it: Triton would try to load it) and renamed into place, and ``config.pbtxt`` is
replaced atomically, so the server sees a complete model at every instant. Every bundle passes its own
integrity checks (digest, signature with ``trust``, every file's sha256) before it is copied, and the copy
again once staged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fgad.bundle import BundleError, Manifest, load_manifest
from fgad.bundle.digest import canonical_json, manifest_digest
from fgad.bundle.files import bundle_file
from fgad.bundle.integrity import TrustSpec
from fgad.bundle.spec import INTEGRITY_FILES
from fgad.core.atomic import atomic_write_text
from fgad.runtime.backends import check_manifest
from fgad.triton import model_config as mc
from fgad.triton.pbtxt import dumps
from fgad.triton.python_model import MODEL_PY
from fgad.triton.served import BUNDLE_DIR

__all__ = ["FORMS", "WrittenModel", "latest_version", "weights_fingerprint", "write_repository"]

logger = logging.getLogger(__name__)

FORMS = ("python", "ensemble")
ENCODER_BACKENDS = ("onnxruntime", "tensorrt", "python")
CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class WrittenModel:
    """One model of the repository after a write: its name, the version now newest, and what happened."""

    name: str
    version: int
    action: str  # "written", "unchanged" (equal to the newest version) or "shared" (an existing encoder)
    role: str  # "pipeline", "encoder", "post" or "ensemble"


def latest_version(model_dir: Path) -> int:
    """The highest numeric version folder of a model (0 when none)."""
    if not model_dir.is_dir():
        return 0
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0)


def _encoder_files(manifest: Manifest, backend: str) -> list[str]:
    """The bundle files the encoder model is made of (graph or plan, external data, plugins)."""
    engine = manifest.engine
    if backend == "tensorrt":
        if engine.kind != "tensorrt":
            raise BundleError(f"field 'engine.kind' is {engine.kind!r}: --encoder tensorrt needs a bundle with a "
                              "TensorRT engine (fgad-export --bundle DIR --engine fp16)", "engine.kind")
        return [engine.file, *[p.file for p in engine.plugins]]
    graph = engine if engine.kind == "onnx" else engine.fallback
    if graph is None:
        raise BundleError("field 'engine.fallback': the bundle has no ONNX graph for the encoder model",
                          "engine.fallback")
    block = manifest.raw.get("engine") or {}
    if graph is not engine:
        block = block.get("fallback") or {}
    return [graph.file, *[str(f) for f in (block.get("external_data") or [])]]


def weights_fingerprint(manifest: Manifest, backend: str = "onnxruntime") -> str:
    """sha256 over the manifest's sha256 of the encoder's files: equal fingerprints, identical encoders."""
    files = _encoder_files(manifest, backend)
    missing = [f for f in files if f not in manifest.sha256]
    if missing:
        raise BundleError(f"field 'sha256' does not list {', '.join(missing)}; re-export the bundle", "sha256")
    record = {"backend": backend, "files": [[Path(f).name, manifest.sha256[f]] for f in files]}
    return hashlib.sha256(canonical_json(record)).hexdigest()


def _copy_bundle(src: Path, manifest: Manifest, dst: Path, skip: Sequence[str] = ()) -> None:
    """The bundle's integrity files and every listed file (except ``skip``) into ``dst``."""
    dst.mkdir(parents=True)
    names = [n for n in INTEGRITY_FILES if (src / n).is_file()]
    names += [n for n in manifest.sha256 if n not in skip]
    for name in names:
        source = bundle_file(src, name, "sha256")
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _recorded_digest(model_dir: Path, version: int) -> str | None:
    manifest = model_dir / str(version) / BUNDLE_DIR / "manifest.json"
    try:
        return manifest_digest(json.loads(manifest.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


@contextmanager
def _staging(repo: Path) -> Iterator[Path]:
    if os.stat(repo.parent).st_dev != os.stat(repo).st_dev:
        raise OSError(f"{repo} is a mount point: versions are staged beside it ({repo.parent}) and renamed into it, "
                      "which needs one file system; mount the folder above the repository instead, or write the "
                      "repository elsewhere and copy it")
    stage = repo.parent / f".{repo.name}.staging-{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, repo: Path, name: str, version: int, config: dict, fill) -> None:  # noqa: ANN001
    """Build version ``version`` of model ``name`` with ``fill(version_dir)`` and move it into the repository."""
    text = dumps(config)
    model_dir = repo / name
    if model_dir.exists():
        version_dir = stage / f"{name}.{version}"
        version_dir.mkdir()
        fill(version_dir)
        os.replace(version_dir, model_dir / str(version))
        atomic_write_text(model_dir / CONFIG_FILE, text)
    else:
        new_dir = stage / name
        (new_dir / str(version)).mkdir(parents=True)
        fill(new_dir / str(version))
        (new_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
        os.replace(new_dir, model_dir)


def _python_fill(bundle: Path, manifest: Manifest, skip: Sequence[str], settings: mc.ServeSettings,
                 trust: TrustSpec | None):  # noqa: ANN202
    def fill(version_dir: Path) -> None:
        _copy_bundle(bundle, manifest, version_dir / BUNDLE_DIR, skip)
        (version_dir / "model.py").write_text(MODEL_PY, encoding="utf-8")
        if not skip:  # the copy passes the same checks as the original
            copied = load_manifest(version_dir / BUNDLE_DIR)
            check_manifest(copied, version_dir / BUNDLE_DIR, verify_hashes=True, strict=True, trust=trust)
    return fill


def _next_version(repo: Path, name: str, digest: str, force: bool) -> tuple[int, bool]:
    """(version to write, whether to write it): N+1, or the newest when it holds this very bundle."""
    newest = latest_version(repo / name)
    if newest and not force and _recorded_digest(repo / name, newest) == digest:
        return newest, False
    return newest + 1, True


def write_repository(
    repo: str | os.PathLike[str],
    bundles: Sequence[str | os.PathLike[str]],
    *,
    form: str = "python",
    encoder: str = "onnxruntime",
    settings: mc.ServeSettings | None = None,
    trust: TrustSpec | None = None,
    force: bool = False,
) -> list[WrittenModel]:
    """Write or update the models of ``bundles`` in the Triton model repository ``repo`` (module docstring).

    ``trust``: public keys the bundles must be signed by to be written (the server checks ``settings.trust``).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if encoder not in ENCODER_BACKENDS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODER_BACKENDS)}, got {encoder!r}")
    settings = settings or mc.ServeSettings()
    root = Path(repo)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--triton {root}: a file is in the way; give a folder for the model repository")
    root.mkdir(parents=True, exist_ok=True)
    loaded: list[tuple[Path, Manifest]] = []
    seen: dict[str, Path] = {}
    for item in bundles:
        path = Path(item)
        manifest = load_manifest(path)
        check_manifest(manifest, path, verify_hashes=True, strict=settings.strict, trust=trust)
        name = mc.model_name(manifest.class_name)
        if name in seen:
            raise ValueError(f"bundles {seen[name]} and {path} are both class {manifest.class_name!r} (model {name}); "
                             "give one bundle per class")
        seen[name] = path
        loaded.append((path, manifest))
    written: list[WrittenModel] = []
    with _staging(root) as stage:
        for path, manifest in loaded:
            if form == "python":
                written.append(_write_python(stage, root, path, manifest, settings, trust, force))
            else:
                written += _write_ensemble(stage, root, path, manifest, settings, trust, force, encoder)
    for model in written:
        logger.info("%s version %d: %s (%s)", model.name, model.version, model.action, model.role)
    return written


def _write_python(stage: Path, root: Path, path: Path, manifest: Manifest, settings: mc.ServeSettings,
                  trust: TrustSpec | None, force: bool) -> WrittenModel:
    name = mc.model_name(manifest.class_name)
    version, write = _next_version(root, name, manifest_digest(manifest.raw), force)
    if not write:
        return WrittenModel(name, version, "unchanged", "pipeline")
    fingerprint = weights_fingerprint(manifest, "tensorrt" if manifest.engine.kind == "tensorrt" else "onnxruntime")
    config = mc.pipeline_config(name, manifest, settings, fingerprint)
    _publish(stage, root, name, version, config, _python_fill(path, manifest, (), settings, trust))
    return WrittenModel(name, version, "written", "pipeline")


def _write_ensemble(stage: Path, root: Path, path: Path, manifest: Manifest, settings: mc.ServeSettings,
                    trust: TrustSpec | None, force: bool, encoder: str) -> list[WrittenModel]:
    files = _encoder_files(manifest, encoder)
    fingerprint = weights_fingerprint(manifest, encoder)
    out: list[WrittenModel] = []
    enc_name = f"fgad_encoder_{fingerprint[:16]}"
    if (root / enc_name).is_dir():
        out.append(WrittenModel(enc_name, latest_version(root / enc_name), "shared", "encoder"))
    else:
        config = mc.encoder_config(enc_name, manifest, settings, fingerprint, encoder)
        if encoder == "python":
            fill = _python_fill(path, manifest, (), settings, trust)
        else:
            def fill(version_dir: Path) -> None:
                main = "model.plan" if encoder == "tensorrt" else "model.onnx"
                shutil.copyfile(bundle_file(path, files[0], "engine.file"), version_dir / main)
                for extra in files[1:]:  # external data keeps its name (the graph refers to it); plugins too
                    target = version_dir / extra
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(bundle_file(path, extra, "sha256"), target)
        _publish(stage, root, enc_name, 1, config, fill)
        out.append(WrittenModel(enc_name, 1, "written", "encoder"))
    digest = manifest_digest(manifest.raw)
    name = mc.model_name(manifest.class_name)
    post = mc.model_name(manifest.class_name, "post")
    post_version, write = _next_version(root, post, digest, force)
    if write:
        skip = [f for f in manifest.sha256 if f not in (manifest.fewshot.file or "")]
        _publish(stage, root, post, post_version, mc.post_config(post, manifest, settings, fingerprint),
                 _python_fill(path, manifest, skip, settings, trust))
    out.append(WrittenModel(post, post_version, "written" if write else "unchanged", "post"))
    ens_version = latest_version(root / name) + (1 if write or not (root / name).is_dir() else 0)
    if write or not (root / name).is_dir():
        config = mc.ensemble_config(name, manifest, settings, enc_name, post, fingerprint)
        _publish(stage, root, name, ens_version, config, lambda d: None)
    out.append(WrittenModel(name, ens_version, "written" if write else "unchanged", "ensemble"))
    return out
