"""Console fixtures: one 3-node sandbox per module, and Debian's Chromium driven by Playwright.

The browser is the system's `chromium` package (installed by .ci/run when missing), launched
by Playwright through `executable_path`: no browser is ever downloaded. Where Chromium or
Playwright is missing the browser tests are skipped, saying which.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from charter.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CHARTER_ARTIFACTS", ROOT / "test-artifacts")) / "console"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1366, "height": 860}  # a laptop screen


def browser_missing() -> str | None:
    if CHROMIUM is None:
        return "Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("console") / "sandbox", nodes=3)
    try:
        asyncio.run(sb.start())
        yield sb
    finally:
        sb.stop()


@asynccontextmanager
async def console_page(
    url: str,
    *,
    client_cert: tuple[Path, Path] | None = None,
    ready_selector: str = "body[data-ready='true']",
) -> AsyncIterator[Any]:
    """A fresh Chromium page (fresh profile) on `url`; with `client_cert` (cert, key) the
    browser presents that TLS client certificate to the node."""
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="charter-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_FLAGS,
                headless=True,
                viewport=VIEWPORT,
                # The node's certificate is endorsed by the service certificate, which a
                # test browser does not trust: docs/console.md says how a person makes it.
                ignore_https_errors=True,
                client_certificates=(
                    []
                    if client_cert is None
                    else [
                        {
                            "origin": url.split("/console")[0],
                            "certPath": str(client_cert[0]),
                            "keyPath": str(client_cert[1]),
                        }
                    ]
                ),
            )
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(url)
                await page.wait_for_selector(ready_selector, timeout=20_000)
                yield page
                assert errors == [], f"JavaScript errors in the console: {errors}"
            finally:
                await context.close()


async def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=False)
    return path
