"""The one outbound session to Microsoft: a timeout on every call, a shared deadline, our CA bundle."""
from __future__ import annotations

import threading
from http.cookiejar import DefaultCookiePolicy
import time
from contextlib import contextmanager
from typing import Any, Iterator

import requests


class TimeoutSession(requests.Session):
    """The one outbound session: every call gets a timeout, even MSAL's, which sends none. A GET answer the portal
    has checked and kept (the authority's discovery document) is answered from memory, so MSAL reads ours."""

    def __init__(self, timeout: float, ca_bundle: str | None = None, trust_env: bool = True):
        super().__init__()
        # False: no proxy, CA or .netrc settings from the environment (requests reads them on every call).
        self.trust_env = trust_env
        # One session serves every user's calls: a cookie Microsoft sets on one must not travel with the next.
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.default_timeout = timeout
        if ca_bundle:
            self.verify = ca_bundle  # the CAs to trust instead of the system's (ENTRA_CA_BUNDLE)
        self._kept: dict[str, requests.Response] = {}
        self._deadline = threading.local()  # per request: gthread workers serve several at once

    def keep(self, url: str, resp: requests.Response) -> None:
        self._kept[url] = resp

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Let the calls made inside share `seconds`: each gets what is left, none starts after it has run out."""
        self._deadline.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline.at = None

    def request(self, method, url, **kwargs):  # type: ignore[override]
        if method.upper() == "GET" and url in self._kept:
            return self._kept[url]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify  # a bundle given here wins over REQUESTS_CA_BUNDLE
        at = getattr(self._deadline, "at", None)
        if at is not None:
            left = at - time.monotonic()
            if left <= 0:
                raise requests.exceptions.ReadTimeout(f"No time left for {method} {url}")
            kwargs["timeout"] = min(kwargs["timeout"], left)
        return super().request(method, url, **kwargs)


def json_or_none(resp: requests.Response) -> Any:
    """A 200 answer's JSON body, or None when the status or the body is not that."""
    try:
        return resp.json() if resp.status_code == 200 else None
    except ValueError:
        return None
