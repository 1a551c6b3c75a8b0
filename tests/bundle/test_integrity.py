"""Bundle integrity: the manifest digest, Ed25519 signatures, unlisted files, and every file the runtime reads
hashed (an ONNX graph's external data too). Each tampering is refused with an error naming the file and field.

Torch-free (the runtime venv runs it); the signature tests need the ``sign`` extra (cryptography).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fgad.bundle import DIGEST_FILE, SIGNATURE_FILE, BundleError, load_manifest
from fgad.bundle.digest import canonical_json, manifest_digest
from fgad.bundle.integrity import check_integrity
from fgad.bundle.staging import sign_bundle, write_manifest
from fgad.core.atomic import atomic_write_json
from fgad.core.onnx_external import external_data_locations
from fgad.runtime.backends import check_manifest
from fgad.runtime.pipeline import Detector
from tests.helpers.fake_bundle import FakeBundle, make_bundle, sha256


def _check(bundle: FakeBundle | Path, **kwargs: Any) -> None:
    root = bundle.path if isinstance(bundle, FakeBundle) else bundle
    check_manifest(load_manifest(root), root, backend="onnxruntime", **kwargs)


def _refused(bundle: FakeBundle | Path, **kwargs: Any) -> BundleError:
    with pytest.raises(BundleError) as info:
        _check(bundle, **kwargs)
    return info.value


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture()
def refs_fake(tmp_path: Path, good_images: list[np.ndarray]) -> FakeBundle:
    return make_bundle(tmp_path / "bundle", references=good_images[:2])


def _with_engine(bundle: FakeBundle) -> FakeBundle:
    """A TensorRT engine and a plugin library, model.onnx as the fallback (the layout add_engine writes)."""
    (bundle.path / "model.engine").write_bytes(b"a serialized plan")
    (bundle.path / "plugins").mkdir()
    (bundle.path / "plugins" / "libp.so").write_bytes(b"\x7fELF plugin")
    data = bundle.manifest()
    data["engine"] = {"kind": "tensorrt", "file": "model.engine", "opset": 19, "precision": "fp16",
                      "tensorrt_version": "10.3.0", "compute_capability": "8.7", "deform": "plugin",
                      "plugins": [{"file": "plugins/libp.so", "ops": ["fgad::FgadDeformConv2d"]}],
                      "fallback": {"kind": "onnx", "file": "model.onnx", "opset": 19, "precision": "fp32"}}
    data["sha256"].update({"model.engine": sha256(bundle.path / "model.engine"),
                           "plugins/libp.so": sha256(bundle.path / "plugins" / "libp.so")})
    bundle.write_manifest(data)
    return bundle


def _with_external_data(bundle: FakeBundle) -> FakeBundle:
    """model.onnx with its weights in model.onnx.data (the layout of a graph above 2 GB), listed as a writer does."""
    model = onnx.load(str(bundle.path / "model.onnx"))
    onnx.save(model, str(bundle.path / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data")  # the shape constants stay inline, as the exporter leaves them
    data = bundle.manifest()
    data["engine"]["external_data"] = ["model.onnx.data"]
    data["sha256"]["model.onnx.data"] = "0" * 64
    bundle.write_manifest(data, rehash=True)
    return bundle


# ---------------------------------------------------------------- the manifest digest


def test_written_bundle_is_protected_and_passes(bundle: FakeBundle, caplog: pytest.LogCaptureFixture) -> None:
    assert (bundle.path / DIGEST_FILE).is_file()
    record = json.loads((bundle.path / DIGEST_FILE).read_text())
    assert record["manifest_sha256"] == manifest_digest(bundle.manifest())
    with caplog.at_level(logging.WARNING, logger="fgad"):
        report = check_integrity(load_manifest(bundle.path), bundle.path)
        _check(bundle)
    assert report.protected and report.unknown == () and report.signed_by is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# (dotted field, new value): what a person editing manifest.json by hand might change
FIELD_EDITS = [
    ("input.mean", [0.5, 0.5, 0.5]),
    ("input.std", [0.2, 0.2, 0.2]),
    ("class_name", "bottle"),
    ("text.descriptions", ["crack", "hole in the part", "stain", "dent", "scratch on the surface"]),
    ("thresholds.image", 0.1),
    ("post.sigma", 1.0),
    ("grid", 4.0),  # same number, another JSON type: also a change
]


@pytest.mark.parametrize(("dotted", "value"), FIELD_EDITS, ids=[e[0] for e in FIELD_EDITS])
def test_edited_manifest_field_is_refused_and_named(bundle: FakeBundle, dotted: str, value: Any) -> None:
    _check(bundle)
    bundle.edit(digest=False, **{dotted.replace(".", "__"): value})
    err = _refused(bundle)
    assert err.field == dotted, str(err)
    assert str(bundle.manifest_path) in str(err) and f"'{dotted}'" in str(err) and DIGEST_FILE in str(err)
    assert "edited or damaged after export" in str(err)
    with pytest.raises(BundleError, match=f"'{dotted}'"):  # through the runtime's front door too
        Detector.from_bundle(bundle.path)


def test_added_and_removed_fields_are_named(bundle: FakeBundle) -> None:
    data = bundle.manifest()
    data["thresholds"]["extra"] = 1
    del data["text"]["num_normal"]
    bundle.write_manifest(data, digest=False)
    err = _refused(bundle)
    assert "'thresholds.extra (added)'" in str(err) and "'text.num_normal (removed)'" in str(err)


def test_recomputed_sha256_entries_do_not_hide_a_changed_file(bundle: FakeBundle) -> None:
    _flip_byte(bundle.path / "model.onnx", 10)
    bundle.write_manifest(bundle.manifest(), rehash=True, digest=False)  # what an editor without fgad can do
    err = _refused(bundle)
    assert err.field == "sha256.model.onnx" and "differ from the manifest that was exported" in str(err)


def test_reserialised_manifest_keeps_its_digest(bundle: FakeBundle) -> None:
    data = bundle.manifest()
    reordered = dict(reversed(list(data.items())))
    bundle.manifest_path.write_text(json.dumps(reordered, indent=None, ensure_ascii=True))  # compact, \\u escapes
    _check(bundle)
    assert canonical_json(json.loads(bundle.manifest_path.read_text())) == canonical_json(data)


def test_bundle_without_digest_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = make_bundle(tmp_path / "old", digest=False)
    with caplog.at_level(logging.WARNING, logger="fgad"):
        Detector.from_bundle(old.path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and DIGEST_FILE in warnings[0] and "go unnoticed" in warnings[0]


def test_damaged_digest_file_is_named(bundle: FakeBundle) -> None:
    (bundle.path / DIGEST_FILE).write_text("{not json")
    err = _refused(bundle)
    assert str(bundle.path / DIGEST_FILE) in str(err) and "not readable JSON" in str(err)
    atomic_write_json(bundle.path / DIGEST_FILE, {"format": "fgad-bundle-digest", "version": 1, "algorithm": "sha256",
                                                  "manifest_sha256": "xyz"})
    assert _refused(bundle).field == "manifest_sha256"


def test_duplicate_manifest_key_is_refused(bundle: FakeBundle) -> None:
    text = bundle.manifest_path.read_text()
    bundle.manifest_path.write_text(text.replace('"class_name": "tile",', '"class_name": "tile", "class_name": "x",'))
    err = _refused(bundle)
    assert err.field == "class_name" and "appears twice" in str(err)


# ---------------------------------------------------------------- the files


def _tamper_onnx(b: FakeBundle) -> None:
    _flip_byte(b.path / "model.onnx", 20)


def _tamper_references(b: FakeBundle) -> None:
    _flip_byte(b.path / "references.npz", 200)


def _tamper_engine(b: FakeBundle) -> None:
    _flip_byte(_with_engine(b).path / "model.engine")


def _tamper_plugin(b: FakeBundle) -> None:
    _flip_byte(_with_engine(b).path / "plugins" / "libp.so")


def _tamper_external_data(b: FakeBundle) -> None:
    _with_external_data(b)
    _check(b)  # intact, it passes
    _flip_byte(b.path / "model.onnx.data", 5)


FILE_TAMPERS: list[tuple[str, Callable[[FakeBundle], None], str]] = [
    ("onnx", _tamper_onnx, "model.onnx"),
    ("external data", _tamper_external_data, "model.onnx.data"),
    ("references", _tamper_references, "references.npz"),
    ("engine", _tamper_engine, "model.engine"),
    ("plugin", _tamper_plugin, "plugins/libp.so"),
]


@pytest.mark.parametrize(("what", "tamper", "name"), FILE_TAMPERS, ids=[t[0] for t in FILE_TAMPERS])
def test_changed_file_is_refused_and_named(refs_fake: FakeBundle, what: str, tamper: Callable[[FakeBundle], None],
                                           name: str) -> None:
    _check(refs_fake)
    tamper(refs_fake)
    err = _refused(refs_fake)
    assert err.field == f"sha256.{name}", str(err)
    assert f"'sha256.{name}'" in str(err) and str(refs_fake.path / name) in str(err) and "changed" in str(err)


def test_external_data_runs_and_must_be_listed(bundle: FakeBundle) -> None:
    _with_external_data(bundle)
    assert external_data_files(bundle.path / "model.onnx") == {"model.onnx.data"}
    assert Detector.from_bundle(bundle.path).backend.name == "onnxruntime"  # the layout really runs
    # a writer that leaves the weights file out of sha256 (and of engine.external_data): the graph itself says
    data = bundle.manifest()
    data["engine"]["external_data"] = None
    del data["sha256"]["model.onnx.data"]
    bundle.write_manifest(data)
    err = _refused(bundle)
    assert err.field == "sha256" and "model.onnx (engine.file) keeps weights in 'model.onnx.data'" in str(err)
    # engine.external_data names a file sha256 does not list
    data["engine"]["external_data"] = ["model.onnx.data"]
    bundle.write_manifest(data)
    err = _refused(bundle)
    assert err.field == "sha256" and "engine.external_data[0] 'model.onnx.data'" in str(err)


def external_data_files(path: Path) -> set[str]:
    return {entry.location for entry in external_data_locations(path)}


@pytest.mark.parametrize("content", [b"", b"\x3a\xff\xff\xff\x0f", b"\x3a\x05\x2a\x10", b"\x3b\x00"],
                         ids=["empty", "length past the end", "nested length past its message", "group wire type"])
def test_external_data_scanner_refuses_malformed_graphs(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        external_data_files(path)


def test_inline_graph_has_no_external_data(bundle: FakeBundle) -> None:
    assert external_data_files(bundle.path / "model.onnx") == set()


def test_unlisted_file_warns_once_and_strict_refuses(bundle: FakeBundle, caplog: pytest.LogCaptureFixture) -> None:
    (bundle.path / "extra.bin").write_bytes(b"x")
    (bundle.path / "sub").mkdir()
    (bundle.path / "sub" / ".hidden").write_bytes(b"y")
    with caplog.at_level(logging.WARNING, logger="fgad"):
        Detector.from_bundle(bundle.path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "extra.bin, sub/.hidden" in warnings[0] and "'sha256'" in warnings[0]
    err = _refused(bundle, strict=True)
    assert err.field == "sha256" and "extra.bin" in str(err) and "--strict" in str(err)
    with pytest.raises(BundleError, match="extra.bin"):
        Detector.from_bundle(bundle.path, strict=True)


# ---------------------------------------------------------------- signatures


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    pytest.importorskip("cryptography", reason="signatures need the sign extra (cryptography)")
    from fgad.bundle.signing import generate_key_pair

    mine, mine_pub = generate_key_pair(tmp_path / "keys" / "mine.pem")
    other, other_pub = generate_key_pair(tmp_path / "keys" / "other.pem")
    assert oct(mine.stat().st_mode & 0o777) == "0o600"
    return {"key": mine, "pub": mine_pub, "other": other, "other_pub": other_pub}


@pytest.fixture()
def signed(bundle: FakeBundle, keys: dict[str, Path]) -> FakeBundle:
    sign_bundle(bundle.path, keys["key"])
    return bundle


def test_signed_bundle_passes_with_its_key(signed: FakeBundle, keys: dict[str, Path]) -> None:
    report = check_integrity(load_manifest(signed.path), signed.path, trust=[keys["pub"]])
    assert report.signed_by is not None and report.signed_by.source == str(keys["pub"])
    Detector.from_bundle(signed.path, trust=[keys["other_pub"], keys["pub"]])


def test_unsigned_bundle_is_refused_with_trust(bundle: FakeBundle, keys: dict[str, Path]) -> None:
    err = _refused(bundle, trust=[keys["pub"]])
    assert err.field == "signature" and str(bundle.path / SIGNATURE_FILE) in str(err) and "not signed" in str(err)


def test_bundle_without_digest_is_refused_with_trust(tmp_path: Path, keys: dict[str, Path]) -> None:
    old = make_bundle(tmp_path / "old", digest=False)
    err = _refused(old, trust=[keys["pub"]])
    assert err.field == "manifest_sha256" and str(old.path / DIGEST_FILE) in str(err) and "refused" in str(err)


def test_other_key_is_refused(signed: FakeBundle, keys: dict[str, Path]) -> None:
    err = _refused(signed, trust=[keys["other_pub"]])
    assert err.field == "signature" and "not trusted" in str(err) and str(signed.path / SIGNATURE_FILE) in str(err)


def test_changed_signature_is_refused(signed: FakeBundle, keys: dict[str, Path]) -> None:
    import base64

    path = signed.path / SIGNATURE_FILE
    record = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[0] ^= 0x01
    record["signature"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(record))
    err = _refused(signed, trust=[keys["pub"]])
    assert err.field == "signature" and "does not verify" in str(err)


def test_manifest_edit_with_recomputed_digest_is_caught_by_the_signature(signed: FakeBundle,
                                                                          keys: dict[str, Path]) -> None:
    signed.edit(thresholds__image=0.0)  # edits the manifest *and* rewrites manifest.digest, leaves the signature
    err = _refused(signed, trust=[keys["pub"]])
    assert err.field == "manifest_sha256" and str(signed.path / SIGNATURE_FILE) in str(err)
    assert "made for another manifest" in str(err)
    assert _refused(signed).field == "manifest_sha256"  # a stale signature is refused without --trust too
    (signed.path / SIGNATURE_FILE).unlink()  # without the signature and without --trust nothing can tell
    _check(signed)
    assert _refused(signed, trust=[keys["pub"]]).field == "signature"


def test_trust_needs_hashes(signed: FakeBundle, keys: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="verify_hashes"):
        _check(signed, trust=[keys["pub"]], verify_hashes=False)


def test_sign_bundle_refuses_a_changed_bundle(bundle: FakeBundle, keys: dict[str, Path]) -> None:
    _flip_byte(bundle.path / "model.onnx", 20)
    with pytest.raises(BundleError, match="sha256.model.onnx"):
        sign_bundle(bundle.path, keys["key"])
    assert not (bundle.path / SIGNATURE_FILE).exists()


def test_sign_bundle_gives_an_old_bundle_a_digest(tmp_path: Path, keys: dict[str, Path]) -> None:
    old = make_bundle(tmp_path / "old", digest=False)
    before = old.manifest_path.read_bytes()
    sign_bundle(old.path, keys["key"])
    assert old.manifest_path.read_bytes() == before
    _check(old, trust=[keys["pub"]])


def test_write_manifest_writes_digest_and_signature(tmp_path: Path, bundle: FakeBundle, keys: dict[str, Path],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from fgad.bundle.signing import load_signing_key

    data = bundle.manifest()
    write_manifest(bundle.path, data, keys["key"])
    atomic_write_json(tmp_path / "plain.json", data)
    assert bundle.manifest_path.read_bytes() == (tmp_path / "plain.json").read_bytes()  # the manifest as before
    _check(bundle, trust=[load_signing_key(keys["key"]).trusted()])
    with caplog.at_level(logging.WARNING, logger="fgad"):
        write_manifest(bundle.path, {**data, "class_name": "other"})  # rewritten in place, no key
    assert not (bundle.path / SIGNATURE_FILE).exists() and "its new manifest is not" in caplog.text
    _check(bundle)


def test_bad_keys_are_named(tmp_path: Path, keys: dict[str, Path]) -> None:
    from fgad.bundle.signing import SigningError, load_signing_key, load_trusted_key

    with pytest.raises(SigningError, match="cannot be read"):
        load_signing_key(tmp_path / "missing.pem")
    with pytest.raises(SigningError, match="that is a private key"):
        load_trusted_key(keys["key"])
    with pytest.raises(SigningError, match="not a readable PEM private key"):
        load_signing_key(keys["pub"])
    with pytest.raises(FileExistsError):
        from fgad.bundle.signing import generate_key_pair

        generate_key_pair(keys["key"])


def test_missing_cryptography_names_the_extra(bundle: FakeBundle, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.bundle.signing import SigningError

    for name in list(sys.modules):
        if name == "cryptography" or name.startswith("cryptography."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # import cryptography -> ImportError
    with pytest.raises(SigningError, match=r"pip install 'fgad\[sign\]'"):
        _check(bundle, trust=[tmp_path / "key.pub"])
    _check(bundle)  # without signatures cryptography is never imported


# ---------------------------------------------------------------- the command lines


@pytest.fixture()
def frames(tmp_path: Path, good_dir: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for p in sorted(good_dir.glob("*.png"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def _fgad_run(bundle: FakeBundle, frames: Path, *extra: str) -> tuple[int, str]:
    from fgad.cli.run import main

    result = CliRunner().invoke(main, ["--bundle", str(bundle.path), "--images", str(frames), *extra])
    return result.exit_code, result.output


def test_fgad_run_refuses_tampering_in_one_line(bundle: FakeBundle, frames: Path) -> None:
    code, output = _fgad_run(bundle, frames)
    assert code == 0, output
    (bundle.path / "notes.txt").write_text("x")
    assert _fgad_run(bundle, frames)[0] == 0  # an unlisted file: a warning
    code, output = _fgad_run(bundle, frames, "--strict")
    assert code == 1 and "notes.txt" in output and "--strict" in output
    bundle.edit(digest=False, input__mean=[0.5, 0.5, 0.5])
    code, output = _fgad_run(bundle, frames)
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(bundle.manifest_path) in lines[0], output
    assert "'input.mean'" in lines[0] and DIGEST_FILE in lines[0]


def test_fgad_run_trust(bundle: FakeBundle, frames: Path, keys: dict[str, Path]) -> None:
    code, output = _fgad_run(bundle, frames, "--trust", str(keys["pub"]))
    assert code == 1 and "not signed" in output and len(output.strip().splitlines()) == 1, output
    sign_bundle(bundle.path, keys["key"])
    code, output = _fgad_run(bundle, frames, "--trust", str(keys["pub"]))
    assert code == 0, output
    code, output = _fgad_run(bundle, frames, "--trust", str(keys["other_pub"]))
    assert code == 1 and "not trusted" in output
    code, output = _fgad_run(bundle, frames, "--trust", str(keys["key"]))  # the private key by mistake
    assert code == 1 and "that is a private key" in output and "Traceback" not in output


def test_fgad_sign_keygen_sign_verify(tmp_path: Path, bundle: FakeBundle) -> None:
    pytest.importorskip("cryptography", reason="signatures need the sign extra (cryptography)")
    from fgad.cli.sign import main

    runner = CliRunner()
    key = tmp_path / "k" / "signing.pem"
    result = runner.invoke(main, ["keygen", str(key)])
    assert result.exit_code == 0, result.output
    assert "key id" in result.output and key.is_file() and (tmp_path / "k" / "signing.pem.pub").is_file()
    assert runner.invoke(main, ["keygen", str(key)]).exit_code == 1  # never overwrites
    result = runner.invoke(main, ["sign", str(bundle.path), "--key", str(key)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["verify", str(bundle.path), "--trust", f"{key}.pub"])
    assert result.exit_code == 0 and "signed by trusted key" in result.output, result.output
    _flip_byte(bundle.path / "model.onnx", 20)
    result = runner.invoke(main, ["verify", str(bundle.path)])
    assert result.exit_code == 1 and "sha256.model.onnx" in result.output
