"""What the user sees, in a real browser: a sweep ends with its report made by itself; `make ui`
prints the link that opens the sweep on the study's view (study.record.view) in MLflow's "Model
training" runs table (not its GenAI overview): every point in its epoch budget's group, the
metric columns with numbers in them, and the study's charts drawn; the report shows its
decisions table and every figure. Chromium is Debian's (`chromium`, `chromium-driver`: .ci/run installs
them), headless, driven by Selenium through chromedriver.

Screenshots go to a temporary folder (their paths are printed), or to $STUDY_SCREENSHOTS:
`STUDY_SCREENSHOTS=docs make test ARGS=tests/test_browser.py` makes the pictures of docs/ (the front page shows ui_charts.png).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.record.contract import find_experiment
from analysis.report import CAPTIONS
from tests.conftest import ROOT, run_cli

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SWEEP = "decide_smoke"  # the smallest grid whose depth-vs-width surface fits: its report decides
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    result = run_cli("--multirun", "--config-dir", "sweeps", "--config-name", SWEEP, "trainer.latency_repeats=2",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", home=home, timeout=900)  # make sweep JOBS=2
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home, result.stdout


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = Path(os.environ.get("TMPDIR", "/tmp"), f"chromium-profile-{os.getpid()}")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1400,1300", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("STUDY_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _save(driver, path: Path, capsys) -> None:
    driver.save_screenshot(str(path))
    with capsys.disabled():
        print(f"\nscreenshot: {path}")


def test_the_sweep_ends_with_its_report_and_the_link_to_its_runs(swept):
    home, out = swept
    report = home / "reports" / SWEEP / "report.html"
    assert f"report: {report} (also on the sweep's parent run, under report/)" in out
    assert "1 epoch: " in out.split("report: ")[1]  # the headline decisions follow the path
    assert re.search(r"browse: make ui, then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?"
                     r"viewStateShareKey=scaling-study&workflowType=machine_learning\n", out)
    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    experiment = find_experiment(client, SWEEP)
    parent = client.search_runs([experiment.experiment_id], "tags.role = 'parent'")[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/report.html", "report/rules.json", "report/depth_vs_width.png"}
    # opening the parent run in the UI shows the decisions
    assert "| Depth or width scaling, 1 epoch |" in parent.data.tags["mlflow.note.content"]


def test_make_ui_opens_the_sweep_on_the_studys_view(swept, browser, shots, capsys):
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    home, _ = swept
    port = _free_port()
    ui = subprocess.Popen(["make", "ui", f"PORT={port}"], cwd=ROOT, env=dict(os.environ, STUDY_HOME=str(home)),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        link = _printed_link(ui, SWEEP)
        _wait_for_http(f"http://127.0.0.1:{port}/", ui)
        browser.get(link)
        body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
        points = _point_names(home)
        # every point is shown without a click, in its epoch budget's group
        WebDriverWait(browser, 60).until(lambda d: "Run Name" in body() and all(name in body() for name in points))
        assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
        for genai in ("Token Usage", "Detect Issues", "Tool calls"):  # the GenAI overview's panels
            assert genai not in body()
        assert f"Scaling sweep {SWEEP}" in body()  # the experiment's description
        assert "Group by: recipe.epochs" in body()
        WebDriverWait(browser, 30).until(lambda d: _metric_columns(d)[:6] == [
            "top1", "minival/top1", "flops", "params", "train_step_ms", "peak_mem_mb"])  # the view's order
        top1 = [c.text for c in browser.find_elements(By.CSS_SELECTOR, '.ag-row [col-id="metrics.`top1`"]')]
        values = [float(t) for t in top1 if re.fullmatch(r"[0-9.e-]+", t)]  # a group's row adds "(average)"
        assert len(values) >= len(points) and all(0 <= v <= 1 for v in values), top1
        for close in browser.find_elements(By.CSS_SELECTOR, "button[data-component-id$='assistant.chat_panel.close']"):
            close.click()  # MLflow's assistant panel: more room for the runs in the picture
        _save(browser, shots / "ui_runs.png", capsys)
        browser.execute_script("arguments[0].click()",
                               browser.find_element(By.CSS_SELECTOR, "input[name='runs-view-mode'][value='CHART']"))
        svg = lambda css: browser.find_elements(By.CSS_SELECTOR, css)  # noqa: E731
        drawn = lambda: {"section": "Scaling study" in body(), "parallel": len(svg(".parcoords")),  # noqa: E731
                         "contour": len(svg("g.contourlevel")), "points": len(svg("path.point"))}
        try:
            WebDriverWait(browser, 60).until(lambda d: all(drawn().values()) and drawn()["points"] >= 2 * len(points))
        except TimeoutException:
            _save(browser, shots / "ui_charts_failed.png", capsys)
            raise AssertionError(f"the study's charts were not drawn: {drawn()} ({len(points)} points)") from None
        assert all(title in body() for title in ("log10_flops vs. top1", "model.width vs. model.depth",
                                                 "Parallel Coordinates", "val/top1"))
        _save(browser, shots / "ui_charts.png", capsys)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(30)


def test_the_report_shows_its_decisions_and_every_figure(swept, browser, shots, capsys):
    from selenium.webdriver.common.by import By

    home, _ = swept
    browser.get((home / "reports" / SWEEP / "report.html").as_uri())
    images = browser.execute_script(
        "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
    assert {alt for alt, _, _ in images} == set(CAPTIONS)
    assert all(complete and width > 0 for _, complete, width in images), images
    rows = browser.find_element(By.ID, "decisions").find_elements(By.TAG_NAME, "tr")
    assert [c.text for c in rows[0].find_elements(By.TAG_NAME, "th")] == ["question", "answer", "decided?",
                                                                          "probability", "data", "split"]
    first = [c.text for c in rows[1].find_elements(By.TAG_NAME, "td")]
    assert first[0] == "Depth or width scaling, 1 epoch" and first[2] in ("decided", "undecided")
    assert first[3].startswith("P(depth better) = ") and first[4] == "complete"  # every point finished
    assert first[5] == "test"  # the split it reads (docs/analysis.md, "Which split")
    assert browser.find_element(By.ID, "missing").text == "Missing points (0)"
    runs = browser.find_element(By.CSS_SELECTOR, "#runs a").get_attribute("href")  # the link to the study's view
    assert re.fullmatch(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?viewStateShareKey=scaling-study&"
                        r"workflowType=machine_learning", runs), runs
    captions = [c.text for c in browser.find_elements(By.TAG_NAME, "figcaption")]
    assert captions == [CAPTIONS[alt] for alt, _, _ in images]
    # the table comes before the figures
    assert browser.execute_script("return document.getElementById('decisions').getBoundingClientRect().top") < \
        browser.execute_script("return document.images[0].getBoundingClientRect().top")
    _save(browser, shots / "report.png", capsys)


def _metric_columns(browser) -> list[str]:
    """The metric columns of the runs table, left to right."""
    from selenium.webdriver.common.by import By

    cells = browser.find_elements(By.CSS_SELECTOR, ".ag-header-cell[col-id^='metrics.']")
    ordered = sorted(cells, key=lambda c: int(c.get_attribute("aria-colindex") or 0))
    return [c.get_attribute("col-id").split("`")[1] for c in ordered]


def _point_names(home: Path) -> list[str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    runs = client.search_runs([find_experiment(client, SWEEP).experiment_id], "tags.point_key != ''")
    return sorted(r.data.tags["mlflow.runName"] for r in runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _printed_link(ui: subprocess.Popen, sweep: str, timeout: float = 120) -> str:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = ui.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.split()[:1] == [sweep] and "http" in line:
            return line.split()[-1]
    raise AssertionError("make ui printed no link for the sweep:\n" + "".join(seen))


def _wait_for_http(url: str, ui: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert ui.poll() is None, "make ui exited"
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answers at {url}")
