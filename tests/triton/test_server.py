"""Against a real tritonserver (nvidia-pytriton's binary) on 127.0.0.1: fgad-run's results over HTTP and gRPC,
bad requests answered with errors while the server keeps serving, a reload after re-export without dropping
in-flight requests. Every request has a timeout; the server is killed in the fixture's finaliser."""

from __future__ import annotations

import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import pytest

from fgad.runtime.pipeline import Detector
from tests.triton.conftest import HAVE_SERVER, NO_SERVER, class_bundle

# every test here talks to a real server (the module-level skip also covers tests that start their own)
pytestmark = [pytest.mark.triton, pytest.mark.timeout(300), pytest.mark.skipif(not HAVE_SERVER, reason=NO_SERVER)]


def _want(bundle_path: Path, images: list[np.ndarray]) -> list:
    detector = Detector.from_bundle(bundle_path)
    return [detector(image) for image in images]


@pytest.mark.parametrize("model", ["fgad_tile", "fgad_disc"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_results_equal_the_runtime(served, images: list[np.ndarray], model: str, protocol: str) -> None:
    from fgad.triton.client import Client

    url = served.http_url if protocol == "http" else served.grpc_url
    client = Client(url, model, timeout_s=30)
    want = _want(served.bundles[model].path, images)
    got = client.batch(images, batch_size=4)
    for w, g in zip(want, got, strict=True):
        assert abs(w.score - g.score) < 1e-5
        assert abs(w.global_prob - g.global_prob) < 1e-5
        assert (w.best_description, w.is_anomalous, w.threshold) == (g.best_description, g.is_anomalous,
                                                                     g.threshold)
        np.testing.assert_allclose(g.anomaly_map, w.anomaly_map, atol=1e-5)
    client.close()


def _healthy(served, images: list[np.ndarray]) -> None:
    from fgad.triton.client import Client

    client = Client(served.http_url, "fgad_tile", timeout_s=30)
    want = _want(served.bundles["fgad_tile"].path, images[:1])[0]
    assert abs(client(images[0]).score - want.score) < 1e-5


def test_bad_requests_get_errors_and_the_server_keeps_serving(served, images: list[np.ndarray]) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    http = httpclient.InferenceServerClient(served.http_url, network_timeout=30)
    grpc = grpcclient.InferenceServerClient(served.grpc_url.removeprefix("grpc://"))
    cases = [("FP32", np.zeros((1, 3, 16, 16), np.float32)),   # wrong shape
             ("FP64", np.zeros((1, 3, 32, 32), np.float64)),   # wrong dtype
             ("INT32", np.zeros((1, 3, 32, 32), np.int32))]
    for mod, client in ((httpclient, http), (grpcclient, grpc)):
        for dtype, array in cases:
            tensor = mod.InferInput("image", list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            with pytest.raises(InferenceServerException):
                client.infer("fgad_tile", [tensor], client_timeout=30) if mod is grpcclient else \
                    client.infer("fgad_tile", [tensor], timeout=30_000_000)
        with pytest.raises(InferenceServerException):
            client.infer("fgad_nothing", [tensor])  # an unknown model
    # garbage bytes: a binary request whose body is not what its header says
    header = (b'{"inputs":[{"name":"image","shape":[1,3,32,32],"datatype":"FP32",'
              b'"parameters":{"binary_data_size":12288}}]}')  # 12288 bytes announced, 100 sent
    for body, headers in ((b"\x00\xffnot json at all" * 10, {}),
                          (header + b"\x01" * 100, {"Inference-Header-Content-Length": str(len(header))})):
        conn = HTTPConnection("127.0.0.1", served.http_port, timeout=30)
        conn.request("POST", "/v2/models/fgad_tile/infer", body=body, headers=headers)
        reply = conn.getresponse()
        assert reply.status >= 400, reply.read()
        conn.close()
    assert http.is_server_live() and http.is_model_ready("fgad_tile")
    _healthy(served, images)
    # the metrics port reports per model (requests refused before scheduling, as these, are not counted there)
    conn = HTTPConnection("127.0.0.1", served.metrics_port, timeout=30)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    conn.close()
    served_lines = [line for line in metrics.splitlines()
                    if line.startswith("nv_inference_request_success") and 'model="fgad_tile"' in line]
    assert served_lines and sum(float(line.rsplit(" ", 1)[1]) for line in served_lines) >= 1


def test_reload_after_reexport_keeps_in_flight_requests(served, server_root: Path, images: list[np.ndarray]) -> None:
    import tritonclient.http as httpclient

    from fgad.triton.client import Client
    from fgad.triton.repository import write_repository

    old = _want(served.bundles["fgad_tile"].path, images[:1])[0].score
    new_bundle = class_bundle(server_root / "tile-v2", "tile", refs_seed=21)
    new = _want(new_bundle.path, images[:1])[0].score
    assert abs(new - old) > 1e-4  # the re-export changes the result, so the reload is visible
    errors: list[BaseException] = []
    scores: list[float] = []
    stop = threading.Event()

    def hammer() -> None:
        client = Client(served.http_url, "fgad_tile", timeout_s=60)
        while not stop.is_set():
            try:
                scores.append(client(images[0]).score)
            except BaseException as exc:  # noqa: BLE001 - every failure is a lost request
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    written = write_repository(served.repo, [new_bundle.path])
    assert (written[0].name, written[0].version) == ("fgad_tile", 2)
    admin = httpclient.InferenceServerClient(served.http_url, network_timeout=120)
    admin.load_model("fgad_tile")  # explicit mode: the new version loads, then the old one drains and unloads
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert scores, "no request completed"
    assert any(abs(s - old) < 1e-5 for s in scores) and abs(scores[-1] - new) < 1e-5
    assert all(abs(s - old) < 1e-5 or abs(s - new) < 1e-5 for s in scores)
    assert admin.get_model_metadata("fgad_tile")["versions"] == ["2"]
    served.bundles["fgad_tile"] = new_bundle


def test_fgad_run_with_triton_equals_fgad_run(served, tmp_path: Path, images: list[np.ndarray]) -> None:
    import json

    from click.testing import CliRunner

    from fgad.cli.run import main as run_main
    from fgad.runtime.overlay import save_image_rgb

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(images[:3]):
        save_image_rgb(frames / f"{i}.png", image)
    bundle = served.bundles["fgad_disc"].path
    runner = CliRunner()
    local = runner.invoke(run_main, ["--bundle", str(bundle), "--images", str(frames), "--jsonl",
                                     str(tmp_path / "local.jsonl")])
    assert local.exit_code == 0, local.output
    for url in (served.http_url, served.grpc_url):
        out = tmp_path / f"remote-{url.split(':')[0]}.jsonl"
        remote = runner.invoke(run_main, ["--triton", url, "--model", "fgad_disc", "--images", str(frames),
                                          "--jsonl", str(out)])
        assert remote.exit_code == 0, remote.output
        want = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [w["frame"] for w in want] == [g["frame"] for g in got]
        for w, g in zip(want, got, strict=True):
            assert abs(w["score"] - g["score"]) < 1e-5
            assert (w["best_description"], w["is_anomalous"]) == (g["best_description"], g["is_anomalous"])
    refused = runner.invoke(run_main, ["--triton", served.http_url, "--model", "fgad_disc", "--bundle", str(bundle),
                                       "--images", str(frames)])
    assert refused.exit_code == 2 and "not with --triton" in refused.output


def test_poll_mode_picks_up_a_reexport_without_errors(tmp_path: Path, images: list[np.ndarray]) -> None:
    """A server polling the repository sees only complete versions: re-exports while clients run cost nothing."""
    from fgad.triton.client import Client
    from fgad.triton.local_server import LocalServer
    from fgad.triton.repository import write_repository

    repo = tmp_path / "repo"
    bundles = [class_bundle(tmp_path / f"v{i}", "tile", refs_seed=30 + i) for i in range(3)]
    write_repository(repo, [bundles[0].path])
    expected = [_want(b.path, images[:1])[0].score for b in bundles]
    errors: list[BaseException] = []
    scores: list[float] = []
    stop = threading.Event()
    with LocalServer(repo, explicit=False, extra_args=("--model-control-mode=poll", "--repository-poll-secs=1"),
                     log_path=tmp_path / "server.log") as server:

        def hammer() -> None:
            client = Client(server.http_url, "fgad_tile", timeout_s=60)
            while not stop.is_set():
                try:
                    scores.append(client(images[0]).score)
                except BaseException as exc:  # noqa: BLE001 - every failure is a lost request
                    errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        for bundle, score in zip(bundles[1:], expected[1:], strict=True):
            write_repository(repo, [bundle.path])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (scores and abs(scores[-1] - score) < 1e-5):
                time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:3]
    assert abs(scores[-1] - expected[2]) < 1e-5
    assert all(min(abs(s - e) for e in expected) < 1e-5 for s in scores)
