"""Fixtures of the Triton tests: fake bundles (tests/helpers/fake_bundle.py), a repository, a local server.

The server tests need ``make test-triton`` (tritonclient and nvidia-pytriton's tritonserver); without them they
are skipped, saying so. The server listens on free ports of 127.0.0.1 only and is killed in the fixture's
finaliser, whatever the tests did.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.fake_bundle import FakeBundle, make_bundle

HAVE_SERVER = importlib.util.find_spec("pytriton") is not None and importlib.util.find_spec("tritonclient") is not None
NO_SERVER = "needs tritonclient and nvidia-pytriton's tritonserver: make test-triton"


def rgb_images(count: int, seed: int, shape: tuple[int, int] = (48, 56)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


def class_bundle(root: Path, class_name: str, refs_seed: int = 1, graph_seed: int = 0) -> FakeBundle:
    """A fake bundle of ``class_name`` with 3 references and a threshold."""
    bundle = make_bundle(root, references=rgb_images(3, refs_seed), seed=graph_seed)
    bundle.edit(class_name=class_name)
    return bundle


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return rgb_images(6, 7)


@pytest.fixture(scope="module")
def server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triton")


@pytest.fixture(scope="module")
def served(server_root: Path) -> Iterator[object]:
    """A server on a repository with ``fgad_tile`` (python form) and ``fgad_disc`` (ensemble, python encoder)."""
    if not HAVE_SERVER:
        pytest.skip(NO_SERVER)
    from fgad.triton.local_server import LocalServer
    from fgad.triton.repository import write_repository

    repo = server_root / "repo"
    tile = class_bundle(server_root / "tile", "tile")
    disc = class_bundle(server_root / "disc", "disc", refs_seed=2)
    write_repository(repo, [tile.path])
    write_repository(repo, [disc.path], form="ensemble", encoder="python")
    server = LocalServer(repo, start_timeout_s=120, log_path=server_root / "server.log")
    try:
        server.start()
        server.bundles = {"fgad_tile": tile, "fgad_disc": disc}  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()
