"""A real headless browser for the web page tests: Debian's ``chromium`` driven by ``chromedriver`` (Selenium).

``require_browser()`` skips a test where the browser, its driver or Selenium is missing, and fails it instead
when ``WANLLMDB_REQUIRE_BROWSER=1`` (as CI sets), like ``require_fuse`` in :mod:`tests.support.mount`.
``start_browser()`` starts one; the caller quits it.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER_PATHS = ("/usr/bin/chromedriver",)


def browser_required() -> bool:
    return os.environ.get("WANLLMDB_REQUIRE_BROWSER") == "1"


def _first(paths: tuple[str, ...], name: str) -> str | None:
    for path in paths:
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def browser_unusable_reason() -> str | None:
    """Why no headless browser can be started here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _first(CHROMIUM_PATHS, "chromium") is None:
        return "chromium is not installed (apt-get install chromium)"
    if _first(DRIVER_PATHS, "chromedriver") is None:
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


def require_browser() -> None:
    reason = browser_unusable_reason()
    if reason:
        if browser_required():
            pytest.fail(f"WANLLMDB_REQUIRE_BROWSER=1 but no browser can run: {reason}")
        pytest.skip(f"no headless browser here: {reason}")


def start_browser(tmp_dir: str):
    """A headless Chromium (a Selenium ``WebDriver``) with its own profile under ``tmp_dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _first(CHROMIUM_PATHS, "chromium") or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1400,1000",
        f"--user-data-dir={os.path.join(tmp_dir, 'chromium-profile')}",
    ):
        options.add_argument(argument)
    service = Service(executable_path=_first(DRIVER_PATHS, "chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    return driver
