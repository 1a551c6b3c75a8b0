"""Bundles exported from the tiny random models (FiLo++ with references, FiLo++ with the objectness box prior in
the graph, FineGrainedAD) served by a real tritonserver: results equal the runtime's, in both forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.triton.conftest import HAVE_SERVER, NO_SERVER, rgb_images

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not HAVE_SERVER, reason=NO_SERVER)]


def test_tiny_model_bundles_on_the_server(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="exporting the tiny models needs the training stack")
    from fgad.runtime.pipeline import Detector
    from fgad.triton.client import Client
    from fgad.triton.local_server import LocalServer
    from fgad.triton.repository import write_repository
    from tests.helpers.golden_bundles import VARIANTS

    bundles = {}
    for name in ("filo_frozen", "filo_bank_objectness", "finegrained"):
        path = VARIANTS[name](tmp_path / name, tmp_path / f"work-{name}")
        if name == "filo_bank_objectness":  # two bundles of class "tile": give this one its own class
            from tests.helpers.fake_bundle import FakeBundle

            FakeBundle(Path(path), 0, 0, 0, ()).edit(class_name="tile_objectness")
        bundles[name] = Path(path)
    repo = tmp_path / "repo"
    write_repository(repo, [bundles["filo_frozen"], bundles["filo_bank_objectness"]])
    write_repository(repo, [bundles["finegrained"]], form="ensemble", encoder="python")
    images = rgb_images(3, 5, shape=(120, 100))
    with LocalServer(repo, start_timeout_s=240, log_path=tmp_path / "server.log") as server:
        for name, path in bundles.items():
            detector = Detector.from_bundle(path)
            want = [detector(img) for img in images]
            for url in (server.http_url, server.grpc_url):
                client = Client(url, f"fgad_{detector.class_name}", timeout_s=120)
                got = client.batch(images, batch_size=2)
                for w, g in zip(want, got, strict=True):
                    assert abs(w.score - g.score) < 1e-5, name
                    assert (w.best_description, w.position) == (g.best_description, g.position), name
                    np.testing.assert_allclose(g.anomaly_map, w.anomaly_map, atol=1e-5)
                client.close()
