"""fgad-triton's repository: versions, atomic staging, integrity on write and on load, shared encoders, the
ensemble's post step in-process (no server needed)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from fgad.bundle import BundleError, load_manifest
from fgad.cli.triton import main as triton_cli
from fgad.core.transforms import preprocess
from fgad.runtime.pipeline import Detector
from fgad.triton.model_config import ServeSettings
from fgad.triton.python_model import MODEL_PY
from fgad.triton.repository import latest_version, write_repository
from fgad.triton.served import BUNDLE_DIR, load_post_detector, load_served_detector, parse_params
from tests.triton.conftest import class_bundle, rgb_images


def _params(model_dir: Path) -> dict:
    """The parameters of a written config, as the python backend hands them over (JSON)."""
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="parsing back needs tritonclient")
    from google.protobuf import json_format, text_format

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def test_versions_and_unchanged(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = class_bundle(tmp_path / "a", "tile")
    assert [m.version for m in write_repository(repo, [first.path])] == [1]
    again = write_repository(repo, [first.path])
    assert (again[0].version, again[0].action) == (1, "unchanged")
    second = class_bundle(tmp_path / "b", "tile", refs_seed=5)  # other references: another bundle
    assert write_repository(repo, [second.path])[0].version == 2
    assert write_repository(repo, [second.path], force=True)[0].version == 3
    model = repo / "fgad_tile"
    assert sorted(p.name for p in model.iterdir()) == ["1", "2", "3", "config.pbtxt"]
    assert latest_version(model) == 3
    assert (model / "3" / "model.py").read_text() == MODEL_PY
    # nothing staged is left behind, neither in the repository nor beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "repo"]
    assert sorted(p.name for p in repo.iterdir()) == ["fgad_tile"]


def test_a_tampered_bundle_is_not_written(tmp_path: Path) -> None:
    bundle = class_bundle(tmp_path / "a", "tile")
    bundle.edit(digest=False, thresholds__image=0.1)
    with pytest.raises(BundleError, match="thresholds"):
        write_repository(tmp_path / "repo", [bundle.path])
    assert not (tmp_path / "repo" / "fgad_tile").exists()


def test_the_served_copy_is_checked_at_load(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository(repo, [class_bundle(tmp_path / "a", "tile").path])
    version = repo / "fgad_tile" / "1"
    params = parse_params(_params(repo / "fgad_tile"))
    assert load_served_detector(version / BUNDLE_DIR, params).num_references == 3
    # a different (intact) bundle dropped in place of the written one is refused by the recorded digest
    other = class_bundle(tmp_path / "b", "tile", refs_seed=9)
    shutil.rmtree(version / BUNDLE_DIR)
    shutil.copytree(other.path, version / BUNDLE_DIR)
    with pytest.raises(BundleError, match="replaced or changed"):
        load_served_detector(version / BUNDLE_DIR, params)
    # and a changed file of the bundle by its sha256
    shutil.rmtree(version / BUNDLE_DIR)
    shutil.copytree(tmp_path / "a", version / BUNDLE_DIR)
    refs = version / BUNDLE_DIR / "references.npz"
    refs.write_bytes(refs.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BundleError, match="references.npz"):
        load_served_detector(version / BUNDLE_DIR, params)


@pytest.mark.parametrize(("key", "value"), [("fgad.step", "shell"), ("fgad.threads", "-1"), ("fgad.knn", "gpu"),
                                            ("fgad.threshold", "nan"), ("fgad.trust", "relative.pem"),
                                            ("fgad.bundle_digest", "abc"), ("fgad.unknown", "1")])
def test_parameters_are_validated(key: str, value: str) -> None:
    params = {"fgad.step": "pipeline", "fgad.class": "tile", "fgad.bundle_digest": "0" * 64, key: value}
    config = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    with pytest.raises(BundleError, match=key):
        parse_params(config)


def test_encoders_are_shared_by_fingerprint(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tile = class_bundle(tmp_path / "a", "tile")
    disc = class_bundle(tmp_path / "b", "disc", refs_seed=3)  # the same graph: identical weights
    other = class_bundle(tmp_path / "c", "cap", graph_seed=4)  # another graph
    written = write_repository(repo, [tile.path, disc.path, other.path], form="ensemble")
    encoders = sorted({m.name for m in written if m.role == "encoder"})
    assert len(encoders) == 2
    assert [m.action for m in written if m.role == "encoder"] == ["written", "shared", "written"]
    names = sorted(p.name for p in repo.iterdir())
    assert names == sorted([*encoders, "fgad_cap", "fgad_cap_post", "fgad_disc", "fgad_disc_post", "fgad_tile",
                            "fgad_tile_post"])
    assert (repo / encoders[0] / "1" / "model.onnx").is_file() or (repo / encoders[1] / "1" / "model.onnx").is_file()
    # the post step carries the manifest and the references, not the graph
    assert sorted(p.name for p in (repo / "fgad_tile_post" / "1" / BUNDLE_DIR).iterdir()) == [
        "manifest.digest", "manifest.json", "references.npz"]
    assert (repo / "fgad_tile" / "1").is_dir()  # the ensemble's (empty) version folder


def test_post_step_equals_the_runtime(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    bundle = class_bundle(tmp_path / "a", "tile")
    write_repository(repo, [bundle.path], form="ensemble")
    params = parse_params(_params(repo / "fgad_tile_post"))
    post, given = load_post_detector(repo / "fgad_tile_post" / "1" / BUNDLE_DIR, params)
    manifest = load_manifest(bundle.path)
    images = rgb_images(4, 11)
    batch = np.stack([preprocess(img, manifest.input.size, manifest.input.mean, manifest.input.std)
                      for img in images])
    session = ort.InferenceSession(str(bundle.path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    given.set(dict(zip(names, session.run(names, {"image": batch}), strict=True)))
    got = post.infer_tensors(batch)
    detector = Detector.from_bundle(bundle.path)
    for image, result in zip(images, got, strict=True):
        want = detector(image)
        assert abs(result.score - want.score) < 1e-6
        assert result.best_description_index == want.best_description_index
        np.testing.assert_allclose(result.anomaly_map, want.anomaly_map, atol=1e-6)


def test_cli_writes_the_repository(tmp_path: Path) -> None:
    bundle = class_bundle(tmp_path / "a", "tile")
    result = CliRunner().invoke(triton_cli, [str(tmp_path / "repo"), str(bundle.path), "--instances", "2",
                                             "--max-batch", "4", "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    assert "fgad_tile" in result.output and "version 1: written" in result.output
    params = _params(tmp_path / "repo" / "fgad_tile")
    assert params["max_batch_size"] == 4
    assert params["parameters"]["fgad.threshold"]["string_value"] == "0.5"
    assert json.loads(params["parameters"]["fgad.input"]["string_value"])["size"] == 32


def test_signed_bundles_with_trust(tmp_path: Path) -> None:
    pytest.importorskip("cryptography", reason="signatures need fgad[sign]")
    from fgad.bundle.signing import generate_key_pair
    from fgad.bundle.staging import sign_bundle

    private, public = generate_key_pair(tmp_path / "keys" / "signing.pem")
    _, other_public = generate_key_pair(tmp_path / "keys" / "other.pem")
    signed = class_bundle(tmp_path / "a", "tile")
    sign_bundle(signed.path, private)
    unsigned = class_bundle(tmp_path / "b", "disc")
    repo = tmp_path / "repo"
    with pytest.raises(BundleError, match="not signed"):
        write_repository(repo, [unsigned.path], trust=[public])
    settings = ServeSettings(trust=(str(public.resolve()),))
    write_repository(repo, [signed.path], trust=[public], settings=settings)
    params = parse_params(_params(repo / "fgad_tile"))
    assert params.trust == (str(public.resolve()),)
    version = repo / "fgad_tile" / "1" / BUNDLE_DIR
    assert (version / "manifest.sig").is_file()
    assert load_served_detector(version, params).num_references == 3
    # the server refuses the copy when the key it trusts did not sign it
    other = dataclasses.replace(params, trust=(str(other_public.resolve()),))
    with pytest.raises(BundleError, match="signature"):
        load_served_detector(version, other)

