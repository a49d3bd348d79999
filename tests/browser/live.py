"""A real portal server (demo mode, emulator included) on 127.0.0.1 and Debian's Chromium, for tests and scripts."""
from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from app import create_app

CHROMIUM = "/usr/bin/chromium"
# Exactly the flags: no sandbox (root), and no background calls to Google's hosts (no network here).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AXE_JS = os.path.join(ROOT, "node_modules", "axe-core", "axe.min.js")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any) -> None:  # one line per request would drown test output
        pass


class LivePortal:
    """The portal in demo mode, served by werkzeug in a thread, with the demo organisations and admins."""

    def __init__(self, instance_path: str, **config: Any) -> None:
        self._app: Flask | None = None
        # Bind first (port 0: the system picks a free one), then build the app for that SERVER_NAME,
        # because the redirect URIs registered in the emulator are fixed when the app is created.
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, self._dispatch, threaded=True,
                                                  request_handler=_QuietHandler)
        self.host = f"127.0.0.1:{self.server.server_port}"
        self.microsoft_url = self.url("/_entra/")  # where the emulator's browser pages are mounted
        self.app = create_app({"DEMO_MODE": True, "SERVER_NAME": self.host, **config},
                              instance_path=instance_path)
        result = self.app.test_cli_runner().invoke(args=["demo", "--no-serve"])
        if result.exit_code != 0:
            raise RuntimeError("seeding the demo data failed: " + result.output)
        self._thread = threading.Thread(target=self.server.serve_forever, name="live-portal", daemon=True)

    def _dispatch(self, environ, start_response):
        return self.app(environ, start_response)

    @property
    def emulator(self):
        return self.app.extensions["entra_emulator"]

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}{path}"

    def __enter__(self) -> "LivePortal":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


def launch_chromium(playwright):
    """Debian's Chromium through Playwright; never a browser Playwright downloads."""
    # Playwright turns the back/forward cache off by default; a person's Chromium has it on, and it is what
    # could show a signed-out user's page again on Back, so the walkthroughs keep it on.
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
                                      ignore_default_args=["--disable-back-forward-cache"])
