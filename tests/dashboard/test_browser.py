"""The dashboard in a real browser: headless Chromium (Debian's, installed by `make test`), via Selenium.

Checks what a person sees: the page loads, a worker appears, lag falls as a
backlog drains, and a dead letter is replayed from the page. The main page's
screenshot is kept in tmp; with KTASKS_UPDATE_SCREENSHOT=1 it is also written
to docs/img/dashboard.png (the one in the docs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ktasks.dev import free_port
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"

pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: `make test` installs Debian's chromium and "
                    "chromium-driver packages")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Dashboard:
    """``ktasks dashboard`` as a subprocess on a free local port."""

    def __init__(self, project: Any, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(project.dir), env.get("PYTHONPATH", "")])
        self.log_path = project.dir / "dashboard.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ktasks", "dashboard", "-A", f"{project.module}:app", "--port", str(self.port),
             "--refresh", "0.5", *args], cwd=project.dir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        wait_until(self._up, 60, interval_s=0.2, message="the dashboard never answered")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return urllib.request.urlopen(self.url + "/dlq", timeout=5).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


SOURCE = """
import os

@app.task
def work(i):
    time.sleep(0.03)
    effect("work", i=i)

@app.task(max_retries=0)
def charge(order):
    if not os.path.exists(EFFECTS + ".card-ok"):
        raise ValueError(f"card declined for order {order}")
    effect("charged", order=order)
"""


def _text(browser: Any, css: str) -> str:
    """The visible text of the first element matching ``css`` ("" if none), read in one step: the live
    part of the page is replaced every refresh, so a found element can go stale before it is read."""
    return str(browser.execute_script(
        "var e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)).strip()


def test_a_person_sees_the_worker_the_lag_draining_and_replays_a_dead_letter(project, browser, tmp_path):
    from selenium.webdriver.common.by import By

    p = project(SOURCE, report_interval_s=0.5, partitions=2)
    backlog = 150
    for i in range(backlog):
        p.app_module.work.delay(i)
    p.app_module.charge.delay(7)
    p.app.flush(10)
    dash = Dashboard(p, "--allow-actions")
    try:
        browser.get(dash.url + "/")
        assert "Overview" in browser.title
        # Before any worker: the whole backlog is lag, and no worker is listed.
        wait_until(lambda: _text(browser, ".group-lag") == str(backlog + 1), 30, interval_s=0.2,
                   message="the page never showed the backlog as lag")
        assert "No worker of this group reported" in browser.page_source

        w = p.worker("-c", "2")
        wait_until(lambda: "running" in _text(browser, f'tr.worker[data-pid="{w.pid}"]'), 90, interval_s=0.2,
                   message="the worker never appeared on the page as running")
        seen: list[int] = []

        def drained() -> bool:
            lag = _text(browser, ".group-lag")
            if lag.isdigit():
                seen.append(int(lag))
            return lag == "0"

        wait_until(drained, 120, interval_s=0.2, message="the lag on the page never fell to 0")
        assert max(seen) > 0 and seen[-1] == 0
        assert len(p.effects("work")) == backlog
        wait_until(lambda: "/s" in _text(browser, f'tr.worker[data-pid="{w.pid}"]'), 10)
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("KTASKS_UPDATE_SCREENSHOT"):
            DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, DOCS_SCREENSHOT)

        # The failed charge is in the dead-letter topic; replay it from the page once the card works.
        browser.find_element(By.LINK_TEXT, "Dead letters").click()
        wait_until(lambda: "card declined for order 7" in browser.page_source, 30, interval_s=0.3)
        # A click returns once the browser acted on it, not always once the next page is in
        # (the replay's page comes after Kafka acknowledged the copy): wait for each page.
        browser.find_element(By.CSS_SELECTOR, "tr.letter a").click()
        wait_until(lambda: "Replays to" in browser.page_source, 30, interval_s=0.2,
                   message="the dead letter's page never loaded")
        assert "retries-exhausted" in browser.page_source and "card declined" in browser.page_source
        Path(str(p.effects_path) + ".card-ok").touch()
        browser.find_element(By.ID, "replay").click()
        wait_until(lambda: "Confirm replay" in browser.page_source, 30, interval_s=0.2,
                   message="the replay's confirmation page never loaded")
        browser.find_element(By.ID, "confirm").click()
        flash = wait_until(lambda: _text(browser, "#flash"), 30, interval_s=0.2,
                           message="no message after confirming the replay")
        assert "replayed to " + p.topic in flash, flash
        charged = wait_effects(p, "charged", 1, timeout_s=60)
        assert charged[0]["order"] == 7
        assert w.stop() == 0
    finally:
        dash.stop()
