"""What a person sees: a migrated run in the real MLflow UI, and our report.html, in headless Chromium.

A real `mlflow server`, a small archive loaded through the public API, then Debian's Chromium driven by Selenium
(`/usr/bin/chromium`, `/usr/bin/chromedriver`; installed with apt-get under CI when missing, failing rather than
skipping there). The MLflow UI is a React app: every check waits for visible text or an element, never sleeps.
Screenshots land in the test's tmp folder.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import neptune_migration as nm
from neptune_migration.archive import ArchiveWriter
from neptune_migration.samples import BASE_TIME, tiny_png
from neptune_migration.vocabulary import RunRef

from .sqlstores import DatabaseUnavailable, ensure_packages

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 40  # seconds for the React app to fetch and draw; a page normally settles in 2-5 s


def write_ui_archive(root: Path) -> Path:
    """One run a person would look at: a described run with a loss curve, a histogram series whose distribution
    drifts over 50 steps, a log and a single image file."""
    rng = random.Random(3)
    created = BASE_TIME
    with ArchiveWriter(root).run(RunRef("acme/vision", "VIS-7")) as w:
        w.add_atom("sys/id", "string", "VIS-7")
        w.add_atom("sys/name", "string", "resnet-baseline")
        w.add_atom("sys/owner", "string", "alice")
        w.add_atom("sys/creation_time", "datetime", created)
        w.add_atom("sys/modification_time", "datetime", created + timedelta(minutes=20))
        w.add_atom("sys/failed", "bool", False)
        w.add_atom("sys/tags", "string_set", ["resnet50", "cifar10"])
        w.add_atom("sys/description", "string", "ResNet-50 baseline on CIFAR-10")
        w.add_atom("parameters/lr", "float", 0.01)
        n = 100
        ts = [created + timedelta(seconds=12 * s) for s in range(n)]
        w.add_series("train/loss", "float_series", list(range(n)), ts,
                     [2.3 * math.exp(-s / 30) + 0.1 + rng.gauss(0, 0.02) for s in range(n)])
        edges = [-3 + 0.2 * i for i in range(31)]
        steps = list(range(0, n, 2))
        hists = []
        for s in steps:
            draws = [rng.gauss(-1 + 2 * s / n, 1.0 - 0.6 * s / n) for _ in range(400)]
            hists.append({"type": "COUNTING", "edges": edges,
                          "values": [float(sum(lo <= v < hi for v in draws)) for lo, hi in itertools.pairwise(edges)]})
        w.add_series("weights/fc", "histogram_series", steps, [ts[s] for s in steps], hists)
        w.add_series("logs/stdout", "string_series", list(range(0, n, 10)), [ts[s] for s in range(0, n, 10)],
                     [f"epoch {s // 10}: loss ok" for s in range(0, n, 10)])
        w.add_file("plots/confusion", "file", tiny_png(5, 32), "confusion.png")
    return root


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
            ensure_packages(binary, [package])  # apt-get, as tests/sqlstores.py does for the databases
    except DatabaseUnavailable as exc:
        # Under CI the browser check must run: a missing browser fails it rather than letting it pass by skipping.
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


def _wait_text(driver, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT).until(lambda d: text in d.find_element("tag name", "body").text,
                                      f"{text!r} never appeared on {driver.current_url}")


def _wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(condition, f"{what} never appeared on {driver.current_url}")


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory, mlflow_server) -> dict[str, object]:
    """The archive loaded and validated once; the report written beside it."""
    root = tmp_path_factory.mktemp("browser")
    archive = write_ui_archive(root / "archive")
    prefix = f"ui{random.randrange(16**6):06x}-"
    options = dict(to="mlflow", mlflow_tracking_uri=mlflow_server.uri, experiment_prefix=prefix,
                   state=root / "state.db", progress=False)
    loaded = nm.load(archive=archive, **options)
    assert loaded.ok, loaded.to_dict()
    checked = nm.validate(archive=archive, report_dir=root / "report", **options)
    assert checked.ok, checked.to_dict()
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(prefix + "acme/vision")
    run = client.search_runs([experiment.experiment_id])[0]
    link = checked.report["runs"][0]["target_url"]
    return {"root": root, "server": mlflow_server.uri, "experiment": experiment.experiment_id,
            "run": run.info.run_id, "report": root / "report" / "report.html", "link": link}


def _page(migrated: dict, tab: str = "") -> str:
    """A run page as the report links to it (the plug-in's run_url), on one of its tabs."""
    link = migrated["link"]
    base, _, query = link.partition("?")
    return f"{base}{tab}?{query}" if query else base + tab


def _close_assistant(driver) -> None:
    # MLflow 3.17's "Assistant" side panel (a beta) covers a third of the page in screenshots.
    for button in driver.find_elements("css selector", "button[aria-label='Close']"):
        button.click()


def test_mlflow_run_page_shows_the_run_its_chart_and_histogram_picture(browser, migrated, tmp_path: Path) -> None:
    browser.get(_page(migrated))
    _wait_text(browser, "ResNet-50 baseline on CIFAR-10")  # the run's description
    body = browser.find_element("tag name", "body").text
    assert "VIS-7" in body and "parameters/lr" in body and "train/loss" in body
    assert "Created by\nalice" in body and "Duration\n20.0min" in body, "owner and the end-time rule in the UI"
    assert "Model training" in body and "Evaluation runs" not in body, "the link opens the ML view, not GenAI's"
    _close_assistant(browser)
    browser.save_screenshot(str(tmp_path / "run-overview.png"))

    browser.get(_page(migrated, "/model-metrics"))
    _wait_for(browser, lambda d: d.find_elements("css selector", ".js-plotly-plot .main-svg"), "a metric chart")
    # The chart has drawn its curve (a trace path with points), not only an empty frame.
    _wait_for(browser, lambda d: any(len(p.get_attribute("d") or "") > 200 for p in
                                     d.find_elements("css selector", ".js-plotly-plot .scatterlayer path")),
              "the loss curve")
    assert "loss" in browser.find_element("tag name", "body").text
    browser.save_screenshot(str(tmp_path / "run-metrics.png"))

    browser.get("about:blank")
    browser.get(_page(migrated, "/artifacts/weights/fc.png"))
    picture = _wait_for(browser, lambda d: [i for i in d.find_elements("css selector", "img[src^='blob:']")
                                            if d.execute_script("return arguments[0].naturalWidth", i) > 300],
                        "the histogram picture")
    assert browser.execute_script("return arguments[0].naturalHeight", picture[0]) > 200
    assert "weights/fc.png" in browser.find_element("tag name", "body").text
    browser.save_screenshot(str(tmp_path / "run-histogram.png"))

    # A new page, not a hash change: the artifact browser picks its selection when it mounts.
    browser.get("about:blank")
    browser.get(_page(migrated, "/artifacts/logs/stdout.log"))
    _wait_text(browser, "epoch 9: loss ok")  # the string series as text, shown by MLflow's text viewer
    browser.save_screenshot(str(tmp_path / "run-log.png"))


def test_mlflow_runs_table_lists_the_run_under_the_described_experiment(browser, migrated, tmp_path: Path) -> None:
    browser.get(f"{migrated['server']}/#/experiments/{migrated['experiment']}?workflowType=machine_learning")
    _wait_text(browser, "Migrated from Neptune project acme/vision")
    _wait_text(browser, "VIS-7")
    body = browser.find_element("tag name", "body").text
    assert "1 matching run" in body and "20.0min" in body
    # The project's full name, not only the breadcrumb's last segment ("vision"), and the ML view's runs table.
    assert "acme/vision" in body.replace("Migrated from Neptune project acme/vision", "")
    assert "Runs" in body and "Evaluation runs" not in body
    browser.save_screenshot(str(tmp_path / "runs-table.png"))


def test_report_html_lists_the_run_with_its_link(browser, migrated, tmp_path: Path) -> None:
    report: Path = migrated["report"]
    browser.get(report.as_uri())
    _wait_text(browser, "VIS-7")
    links = {a.text: a.get_attribute("href") for a in browser.find_elements("tag name", "a")}
    run_links = [href for text, href in links.items() if migrated["run"] in (href or "")]
    assert run_links, f"no link to MLflow run {migrated['run']} in {sorted(links)}"
    assert run_links[0].startswith(migrated["server"]) and f"/experiments/{migrated['experiment']}/" in run_links[0]
    rows = [r.text for r in browser.find_elements("css selector", "tr") if "VIS-7" in r.text]
    assert rows and "acme/vision" in browser.find_element("tag name", "body").text
    browser.save_screenshot(str(tmp_path / "report.png"))
    # Following the run's link lands on its MLflow page.
    browser.find_element("link text", "VIS-7").click()
    _wait_text(browser, "ResNet-50 baseline on CIFAR-10")
    assert browser.current_url == run_links[0]
