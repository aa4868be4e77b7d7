"""The dashboard in a real browser: Debian's chromium, driven by Selenium through
/usr/bin/chromedriver, over uvicorn on 127.0.0.1.

In CI (``CI`` set) a missing chromium fails the test; elsewhere it is skipped, saying why.
``MEMABLE_SCREENSHOTS=DIR`` saves the screenshots of the two main pages into DIR (the docs'
``docs/_static``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memable.storage import SQLiteStorage

from .web_world import serving

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1360,1000",
)  # fmt: skip


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail(
                f"CI needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
            )
        pytest.skip(f"no {CHROMIUM} or {CHROMEDRIVER}: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="memable-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_in_a_browser(browser: Any, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(check: Any, what: str) -> Any:
        # The live region is replaced while we look: a stale element is looked up again.
        return WebDriverWait(
            browser, 20, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
        ).until(lambda _: check(), message=what)

    def text(selector: str) -> str:
        """The text of the first element matching *selector*, read in one step."""
        found = browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
            selector,
        )
        assert isinstance(found, str), f"nothing matches {selector!r}"
        return found

    shots = os.environ.get("MEMABLE_SCREENSHOTS")
    path = str(tmp_path / "world.db")
    with serving(path, allow_actions=True) as url:
        reader = SQLiteStorage(path, read_only=True)  # what the page should show
        reader.open()
        try:
            expected = [r.instance_id for r in reader.list_instances(newest_first=True)]
            executed = sum(
                len(reader.load_history(r.instance_id).steps)
                for r in reader.list_instances()
                if r.instance_id == "order-o-1" or r.parent_id == "order-o-1"
            )
        finally:
            reader.close()

        # The instance list shows the right rows, newest first.
        browser.get(url + "/")
        rows = browser.find_elements(By.CSS_SELECTOR, "table.instances tr.instance")
        assert [row.get_attribute("data-id") for row in rows] == expected
        suspended = browser.find_element(By.CSS_SELECTOR, '.count[data-status="suspended"] .n')
        assert suspended.text == "2"
        if shots:
            wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "time[data-ago]"), "times")
            height = browser.execute_script("return document.body.scrollHeight")
            browser.set_window_size(1360, min(height + 140, 2400))
            browser.save_screenshot(str(Path(shots) / "dashboard-instances.png"))
            browser.set_window_size(1360, 1000)

        # The timeline has one bar per executed step (the instance's and its children's).
        browser.get(url + "/instances/order-o-1")
        bars = browser.find_elements(By.CSS_SELECTOR, "svg.gantt rect.bar.step")
        assert executed == 6
        assert len(bars) == executed
        assert browser.find_element(By.CSS_SELECTOR, ".countdown").text.startswith("in 1 h")
        if shots:
            height = browser.execute_script("return document.body.scrollHeight")
            browser.set_window_size(1360, min(height + 140, 2400))
            browser.save_screenshot(str(Path(shots) / "dashboard-instance.png"))
            browser.set_window_size(1360, 1000)

        # A signal sent by the form resumes the instance; the page follows without a reload.
        browser.execute_script("window.notReloaded = true")
        browser.find_element(By.CSS_SELECTOR, "form.signal button").click()
        wait_for(
            lambda: "delivered" in text("#action-result"),
            "the engine applies the signal",
        )
        wait_for(
            lambda: text(".instance-head .badge").endswith("completed"),
            "the page shows the instance completed",
        )
        assert browser.execute_script("return window.notReloaded") is True
        output = browser.find_element(By.CSS_SELECTOR, "dl.io").text
        assert "receipt for o-1: 43 EUR" in output
        assert (
            len(browser.find_elements(By.CSS_SELECTOR, "svg.gantt rect.bar.step")) == executed + 1
        )
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not [e for e in severe if "favicon" not in e["message"]], severe
