"""Headless Chromium for the review page's tests (selenium + Debian's chromium and chromium-driver)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER = ("chromedriver",)


def find(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for n in names:
        p = shutil.which(n) or (f"/usr/lib/chromium/{n}" if Path(f"/usr/lib/chromium/{n}").is_file() else None)
        if p:
            return p
    return None


def why_no_browser() -> str:
    """'' when a headless Chromium can be driven here, else why not (the skip reason)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not find(CHROMIUM, "CHROMIUM"):
        return "no Chromium here (apt-get install chromium chromium-driver, or set $CHROMIUM)"
    if not find(DRIVER, "CHROMEDRIVER"):
        return "no chromedriver here (apt-get install chromium-driver, or set $CHROMEDRIVER)"
    return ""


def chromium(download_dir: Path, width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium that downloads into `download_dir` without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    opts.binary_location = find(CHROMIUM, "CHROMIUM")
    opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=opts, service=Service(find(DRIVER, "CHROMEDRIVER")))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def open_page(driver: Any, page: Path, timeout: float = 30.0) -> None:
    driver.get(Path(page).resolve().as_uri())
    wait(lambda: driver.execute_script("return document.documentElement.dataset.ready === '1'"), timeout,
         f"{page} did not finish loading")


def wait(cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.05)
