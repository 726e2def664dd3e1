"""Headless Chromium (Debian's, with its chromedriver) driven through Selenium, as a person would.

The browser and driver come from the operating system's packages
(``scripts/browser install``, a prerequisite of ``make test``); Selenium is
given both paths, so it never looks for or downloads a browser. A missing
browser fails the test with the command that installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support.worker import ROOT

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CONVEYOR_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
#: Where screenshots go: docs/console/ when regenerating the docs, else the test's folder.
SCREENSHOTS = os.environ.get("CONVEYOR_CONSOLE_SCREENSHOTS")


class Page:
    """One logged-in (or not) browser on the console at ``base``."""

    def __init__(self, driver: webdriver.Chrome, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots

    def open(self, path: str) -> Page:
        self.driver.get(self.base + path)
        return self

    @property
    def path(self) -> str:
        return str(self.driver.current_url).removeprefix(self.base)

    @property
    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def find(self, css: str) -> WebElement:
        try:
            return self.driver.find_element(By.CSS_SELECTOR, css)
        except NoSuchElementException:
            raise AssertionError(f"no {css} on {self.path}; the page says:\n{self.text}") from None

    def all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def fill(self, css: str, value: str) -> Page:
        field = self.find(css)
        field.clear()
        field.send_keys(value)
        return self

    def select(self, css: str, text: str) -> Page:
        Select(self.find(css)).select_by_visible_text(text)
        return self

    def click(self, css: str) -> Page:
        """Click, and when that loads another page (a link, a form), wait until it has."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.find(css).click()
        with contextlib.suppress(TimeoutException):  # the click stayed on this page
            WebDriverWait(self.driver, 10).until(staleness_of(old))
        WebDriverWait(self.driver, 10).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        return self

    def login(self, token: str) -> Page:
        self.open("/")
        assert self.path.startswith("/login"), f"not sent to the login page: {self.path}"
        return self.fill("#token", token).click("#login")

    def until(
        self, accept: Callable[[Page], bool], what: str, timeout_s: float = 30, reload: bool = True
    ) -> Page:
        """Reload (as a person presses F5) until ``accept`` holds; fail with the page's text."""
        deadline = time.monotonic() + timeout_s
        while not accept(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the page says:\n{self.text}")
            time.sleep(0.5)
            if reload:
                self.driver.refresh()
        return self

    def post_form(self, action: str, fields: dict[str, str]) -> Page:
        """Submit a form this page never offered (a forged request), as a script could."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.execute_script(
            """
            const form = document.createElement('form');
            form.method = 'post'; form.action = arguments[0];
            for (const [name, value] of Object.entries(arguments[1])) {
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = name; input.value = value;
                form.appendChild(input);
            }
            document.body.appendChild(form);
            form.submit();
            """,
            action,
            fields,
        )
        WebDriverWait(self.driver, 10).until(staleness_of(old))
        return self

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot {path}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path


def _check_installed() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    assert not missing, f"{missing} missing: run `scripts/browser install` (make test does)"


@contextmanager
def chromium(base: str, profile: Path, shots: Path | None = None) -> Iterator[Page]:
    """A fresh headless Chromium (its own profile folder) on the console at ``base``."""
    _check_installed()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=CHROMEDRIVER)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        raise AssertionError(f"chromium did not start: {exc.msg}") from None
    target = Path(SCREENSHOTS) if SCREENSHOTS else (shots or profile)
    if not target.is_absolute():
        target = ROOT / target
    target.mkdir(parents=True, exist_ok=True)
    try:
        yield Page(driver, base, target)
    finally:
        driver.quit()
