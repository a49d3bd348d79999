"""Pages stay out of the browser's caches, so Back after sign-out cannot show them (the browser test proves the
effect in Chromium; this proves the header where Chromium is missing)."""
from __future__ import annotations

from helpers import password_sign_in


def test_signed_in_pages_and_the_login_prompt_are_no_store(client, northwind):
    assert client.get("/login").headers["Cache-Control"] == "no-store"
    password_sign_in(client, "admin@northwind.example")
    for path in ("/", "/profile/", "/settings/security"):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store", path


def test_static_files_may_be_cached(client):
    response = client.get("/static/portal.css")
    assert response.status_code == 200 and "no-store" not in response.headers.get("Cache-Control", "")
