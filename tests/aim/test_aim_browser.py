"""What a person sees: a run migrated with `--to aim`, served by `aim up`, in headless Chromium.

A small archive loaded through the public API, then Aim's own `aim up --repo PATH --port FREE` on the repository and
Debian's Chromium driven by Selenium (as tests/test_browser.py does for MLflow). Aim's UI is a React app: every check
waits for visible text or an element, never sleeps. Screenshots land in the test's tmp folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import neptune_migration as nm
from neptune_migration.archive import ArchiveWriter
from neptune_migration.samples import BASE_TIME
from neptune_migration.vocabulary import RunRef

from ..sqlstores import DatabaseUnavailable, ensure_packages
from .aim_read import runs_by_key

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AIM = Path(sys.executable).parent / "aim"
WAIT = 60  # seconds for the React app to fetch and draw


def _archive(root: Path) -> Path:
    rng = random.Random(5)
    with ArchiveWriter(root).run(RunRef("acme/vision", "VIS-7")) as w:
        w.add_atom("sys/creation_time", "datetime", BASE_TIME)
        w.add_atom("sys/modification_time", "datetime", BASE_TIME + timedelta(minutes=20))
        w.add_atom("sys/failed", "bool", False)
        w.add_atom("sys/tags", "string_set", ["resnet50"])
        w.add_atom("parameters/lr", "float", 0.01)
        n = 100
        w.add_series("train/loss", "float_series", list(range(n)),
                     [BASE_TIME + timedelta(seconds=12 * s) for s in range(n)],
                     [2.3 * math.exp(-s / 30) + 0.1 + rng.gauss(0, 0.02) for s in range(n)])
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("aim-ui")
    archive = _archive(root / "archive")
    options = dict(to="aim", aim_repo=str(root / "aim-repo"), state=root / "state.db", progress=False)
    assert nm.load(archive, **options).ok
    assert nm.validate(archive, report_dir=root / "report", **options).ok
    (run,) = runs_by_key(root / "aim-repo")["acme/vision/VIS-7"]
    port = _free_port()
    proc = subprocess.Popen([str(AIM), "up", "--repo", str(root / "aim-repo"), "--host", "127.0.0.1", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "aim up exited"
            try:
                with urllib.request.urlopen(f"{url}/api/runs/{run.hash}/info", timeout=5) as response:
                    info = json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline, "aim up never answered"
                time.sleep(0.5)
        assert info["props"]["name"] == "VIS-7"
        yield {"url": url, "run": run.hash}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
            ensure_packages(binary, [package])
    except DatabaseUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no headless Chromium: {exc}", pytrace=False)
        pytest.skip(f"no headless Chromium: {exc}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(condition, f"{what} never appeared on {driver.current_url}")


def test_aim_run_metrics_page_shows_the_loss_curve(browser, served: dict, tmp_path: Path) -> None:
    browser.get(f"{served['url']}/runs/{served['run']}/metrics")
    _wait_for(browser, lambda d: "train/loss" in d.find_element("tag name", "body").text, "the metric's name")
    # The chart has drawn its line through the 100 points, not only axes.
    _wait_for(browser, lambda d: any(len(p.get_attribute("d") or "") > 500 for p in
                                     d.find_elements("css selector", "svg .Lines path")), "the loss curve")
    body = browser.find_element("tag name", "body").text
    assert "acme/vision" in body and "VIS-7" in body and "Finished" in body
    assert "20min" in body, "the run's duration from its Neptune times"
    browser.save_screenshot(str(tmp_path / "aim-run-metrics.png"))
