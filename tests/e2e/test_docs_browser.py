"""/docs in a real browser (Debian's headless Chromium) with every request off this machine refused:
Swagger UI renders the API from the package's own assets, as on an agency network without internet."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port, process_env, start, stop_serve, wait_ready

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_swagger_ui_renders_the_api_with_no_internet(tmp_path: Path, dev_certs: Path) -> None:
    assert CHROMIUM, "Debian's chromium is required (.ci/run installs it: apt-get install chromium)"
    from playwright.sync_api import Route, sync_playwright

    port = free_port()
    log = tmp_path / "serve.log"
    env = process_env(f"sqlite:///{tmp_path / 'kv.db'}", tmp_path, dev_certs, KANALVAXEL_API__PORT=str(port))
    proc = start(["serve"], env, tmp_path, log)
    base = f"http://127.0.0.1:{port}"
    refused: list[str] = []
    loaded: list[str] = []

    def only_this_machine(route: Route) -> None:
        url = route.request.url
        if url.startswith(base + "/") or url == base:
            loaded.append(url)
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    try:
        with httpx.Client(base_url=base, timeout=10, trust_env=False) as http:
            wait_ready(http, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.route("**/*", only_this_machine)
                page.goto(f"{base}/docs", wait_until="networkidle")
                title = page.locator(".swagger-ui .info .title")
                title.wait_for(timeout=30_000)
                assert "kanalväxel" in title.inner_text()
                # Every operation is listed, and one opens with its parameters.
                operations = page.locator(".opblock-summary-path")
                paths = {
                    operations.nth(i).inner_text().replace("\u200b", "") for i in range(operations.count())
                }
                assert {
                    "/v1/shipments",
                    "/v1/shipments/{shipment_id}",
                    "/v1/recipients/{recipient_id}/channels",
                } <= paths
                page.locator(".opblock-summary-path", has_text="/v1/shipments/{shipment_id}").first.click()
                page.locator(".parameters-container").first.wait_for(timeout=10_000)
            finally:
                browser.close()
    finally:
        stop_serve(proc)
    assert refused == []
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in loaded)
    assert any(u.endswith("/openapi.json") for u in loaded)
