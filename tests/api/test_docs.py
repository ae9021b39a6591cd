"""/docs and /redoc work on a network without internet: every script, style and image they load is served
by the application itself (a real browser checks the page in tests/e2e/test_docs_browser.py)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (
                (tag == "script" and name == "src")
                or (tag == "link" and name == "href")
                or (tag == "img" and name == "src")
            ):
                self.urls.append(value)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_nothing_from_elsewhere(http: TestClient, page: str) -> None:
    r = http.get(page)
    assert r.status_code == 200
    parser = _Assets()
    parser.feed(r.text)
    assert parser.urls, "the page loads its scripts and styles"
    for url in parser.urls:
        assert url.startswith("/"), f"{page} loads {url} from another host"
        asset = http.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    assert "cdn." not in r.text
    assert "fonts.googleapis" not in r.text


def test_the_bundled_swagger_ui_reads_openapi_3_1(http: TestClient) -> None:
    # Swagger UI renders OpenAPI 3.1 (what FastAPI writes) from version 5 on; 4.x shows an empty page.
    assert http.get("/openapi.json").json()["openapi"].startswith("3.1")
    js = http.get("/docs/assets/swagger-ui-bundle.js").text
    assert "OpenAPI 3.1" in js or "openapi-3-1" in js or "oas31" in js
