"""A requests transport adapter that answers Microsoft hosts from the emulator in-process."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from werkzeug.test import EnvironBuilder, run_wsgi_app

if TYPE_CHECKING:
    from . import Emulator

LOGIN_HOST = "login.microsoftonline.com"
GRAPH_HOST = "graph.microsoft.com"
GRAPH_PREFIX = "/graph"  # Graph paths live under this prefix inside the emulator's app


class EmulatorAdapter(BaseAdapter):
    """Turn a PreparedRequest into a WSGI call to the emulator and back into a Response."""

    def __init__(self, emulator: "Emulator") -> None:
        super().__init__()
        self.emulator = emulator
        self._lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout=None,
             verify=True, cert=None, proxies=None) -> requests.Response:
        with self._lock:
            self.emulator.requests.append((request.method, request.url, timeout))
        without_scheme = request.url.split("://", 1)[-1]
        for prefix in self.emulator.faults.get("timeout") or ():
            if without_scheme.startswith(prefix):
                raise requests.exceptions.ReadTimeout(
                    f"Emulated read timeout for {request.url}", request=request)
        for prefix, seconds in (self.emulator.faults.get("slow") or {}).items():
            if without_scheme.startswith(prefix):
                # A slow answer waits no longer than the caller's timeout, as over a real socket.
                limit = _read_timeout(timeout)
                time.sleep(seconds if limit is None else min(seconds, limit))
                if limit is not None and seconds > limit:
                    raise requests.exceptions.ReadTimeout(
                        f"Emulated slow answer for {request.url}: none within {limit} s", request=request)

        parts = urlsplit(request.url)
        host = (parts.hostname or "").lower()
        if host == GRAPH_HOST:
            path = GRAPH_PREFIX + parts.path
        elif host == LOGIN_HOST:
            path = parts.path
        else:
            raise requests.exceptions.ConnectionError(
                f"The Entra emulator does not serve {host}", request=request)
        return call_wsgi(self.emulator.wsgi, request, path, self)

    def close(self) -> None:
        pass


class WSGIAdapter(BaseAdapter):
    """Answer a session's requests from any WSGI app in-process (demo mode mounts the portal on the provisioning
    service's session this way; tests mount the SCIM app they provision to). The caller is this machine, so
    REMOTE_ADDR is a loopback address."""

    def __init__(self, app, remote_addr: str = "127.0.0.1") -> None:
        super().__init__()
        self.app = app
        self.remote_addr = remote_addr

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout=None,
             verify=True, cert=None, proxies=None) -> requests.Response:
        return call_wsgi(self.app, request, urlsplit(request.url).path, self, remote_addr=self.remote_addr)

    def close(self) -> None:
        pass


def call_wsgi(app, request: requests.PreparedRequest, path: str, adapter: BaseAdapter,
              remote_addr: str | None = None) -> requests.Response:
    """Run one PreparedRequest through a WSGI app at `path` and build the requests.Response."""
    parts = urlsplit(request.url)
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    environ = EnvironBuilder(path=path, base_url=f"{parts.scheme}://{parts.netloc}",
                             method=request.method, headers=headers, data=body,
                             query_string=parts.query,
                             environ_base={"REMOTE_ADDR": remote_addr} if remote_addr else None).get_environ()
    app_iter, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    try:
        content = b"".join(app_iter)
    finally:
        getattr(app_iter, "close", lambda: None)()

    response = requests.Response()
    code, _, reason = status.partition(" ")
    response.status_code = int(code)
    response.reason = reason
    response.headers = CaseInsensitiveDict(list(response_headers.items()))
    response._content = content
    response.url = request.url
    response.request = request
    response.encoding = get_encoding_from_headers(response.headers)
    response.connection = adapter
    return response


def _read_timeout(timeout) -> float | None:
    """The read part of a requests timeout (a number, a (connect, read) pair, or None)."""
    if isinstance(timeout, tuple):
        timeout = timeout[1]
    return None if timeout is None else float(timeout)
