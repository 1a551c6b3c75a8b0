"""The page in headless Chromium: the streams play, the counters show what was published, the gallery fills.

Needs selenium (``pip install -c constraints.txt -e '.[liveview-test]'``) and Debian's ``chromium`` and
``chromium-driver`` (``apt-get install -y chromium chromium-driver``); ``FGAD_CHROMIUM`` / ``FGAD_CHROMEDRIVER``
name other binaries. Set ``FGAD_LIVEVIEW_SCREENSHOT=docs/img/liveview.png`` to refresh the docs' screenshot.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fgad.runtime.liveview import LiveView, ViewSettings
from fgad.runtime.liveview.demo import DEMO_SOURCES, synthetic_result

TOKEN = "browser-test-token"


def _binary(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    return next((path for name in names if (path := shutil.which(name))), None)


CHROMIUM = _binary("FGAD_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _binary("FGAD_CHROMEDRIVER", "chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("selenium") is None,
                       reason="selenium is not installed (pip install -e '.[liveview-test]')"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="no chromium/chromedriver on PATH (apt-get install -y chromium chromium-driver)"),
]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,820", "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_shows_streams_counters_and_gallery(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # a public bind, so the page runs with the token as an operator's browser on the line would
    view = LiveView(ViewSettings(host="0.0.0.0", port=0, token=TOKEN, settings_path=tmp_path / "lv.json"),
                    threshold=0.5)
    view.start()
    try:
        port = int(view.url.rstrip("/").rsplit(":", 1)[1])
        expected: dict[str, dict[str, int]] = {}
        newest: dict[str, np.ndarray] = {}
        for i, source in enumerate(DEMO_SOURCES):
            counts = {"OK": 0, "NG": 0}
            for index in range(12 + 3 * i):
                result = synthetic_result(i, index, 0.5)
                counts[result.decision] += 1
                view.publish(source=source, frame_index=index, timestamp=1_764_750_000.0 + index,
                             decision=result.decision, score=result.score, latency_ms=8.0 + i + (index % 3),
                             threshold=0.5, overlay_rgb=result.overlay, description=result.description)
                newest[source] = result.overlay
            expected[source] = counts
        browser.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
        wait = WebDriverWait(browser, 20)
        for source, counts in expected.items():
            card = f'.card[data-source="{source}"]'
            wait.until(lambda d, c=card: d.find_elements(By.CSS_SELECTOR, c))
            wait.until(lambda d, c=card, n=counts: d.find_element(By.CSS_SELECTOR, c + " .ok").text == str(n["OK"])
                       and d.find_element(By.CSS_SELECTOR, c + " .ng").text == str(n["NG"]))
            wait.until(lambda d, c=card: d.execute_script(
                "const i = document.querySelector(arguments[0]); return i.naturalWidth;", c + " .stream")
                == 320)
        n_ng = sum(c["NG"] for c in expected.values())
        assert n_ng == 5
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) == n_ng
                   and all(d.execute_script("return arguments[0].naturalWidth", img) > 0
                           for img in d.find_elements(By.CSS_SELECTOR, "#gallery img")))
        assert browser.find_element(By.ID, "threshold-value").text == "0.5000"
        p50 = browser.find_element(By.CSS_SELECTOR, f'.card[data-source="{DEMO_SOURCES[0]}"] .p50').text
        assert p50 == "9.0"

        shot_path = tmp_path / "liveview.png"
        assert browser.save_screenshot(str(shot_path))
        shot = cv2.cvtColor(cv2.imread(str(shot_path)), cv2.COLOR_BGR2RGB)
        for source in DEMO_SOURCES:
            rect = browser.find_element(By.CSS_SELECTOR, f'.card[data-source="{source}"] .stream').rect
            x, y, w, h = (round(rect[k]) for k in ("x", "y", "width", "height"))
            assert y + h <= shot.shape[0], "the stream is below the screenshot's fold"
            area = shot[y:y + h, x:x + w].astype(np.float32)
            # not blank: textured like the published overlay, and about its colour (the letterbox is black)
            assert area.std() > 10, f"{source}: the stream area is blank"
            shown = cv2.resize(area, (320, 240), interpolation=cv2.INTER_AREA)
            sent = newest[source].astype(np.float32)
            assert np.corrcoef(shown[..., 0].ravel(), sent[..., 0].ravel())[0, 1] > 0.5, f"{source}: other image"

        # the threshold control: type, apply, see it persisted and shown
        field = browser.find_element(By.ID, "threshold-input")
        field.send_keys("0.42")
        browser.find_element(By.CSS_SELECTOR, "#threshold-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "threshold-value").text == "0.4200")
        assert browser.find_element(By.ID, "threshold-status").text == "saved"
        assert view.threshold == 0.42

        target = os.environ.get("FGAD_LIVEVIEW_SCREENSHOT")
        if target:
            cv2.imwrite(target, cv2.cvtColor(shot, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    finally:
        view.stop()
