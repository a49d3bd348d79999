"""A test browser that behaves like Chromium (JavaScript off) where the portal's security depends on it.

It reaches each host's WSGI app in-process and, like Chromium:
- follows redirects as Fetch does (301/302 after POST and 303 become GET; 307/308 keep the method and body);
- sends `Referer` and `Origin` as the Fetch standard says for the Referrer-Policy in force: the policy of the page
  the request comes from, replaced by a redirect response's own `Referrer-Policy` header, and `Origin: null`
  where Fetch (and Chromium) serialise the origin as null;
- keeps cookies by their flags (RFC 6265bis): `Secure` set and sent over https only, the `__Host-` and
  `__Secure-` prefixes, `Domain`/host-only, `Path`, `Max-Age`/`Expires`, SameSite (an unspecified one is Lax,
  with Chromium's two-minute "Lax+POST" allowance); `SameSite=Lax` cookies go with cross-site top-level GETs only;
- honours HSTS (http:// becomes https:// for hosts that sent it) and blocks form submissions, redirects
  included, that the page's CSP `form-action` does not allow;
- loads a page's iframes (one level) with third-party cookies blocked, under the page's CSP `frame-src` and the
  answer's `frame-ancestors` / `X-Frame-Options`;
- submits forms found in the page's HTML (action, method, hidden fields such as the CSRF token, the submitter's
  name and value) and keeps the current page when a response is a download.

Not modelled: JavaScript, `<meta name="referrer">`, the public suffix list (a site is the host's last two labels).
"""
from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from werkzeug.datastructures import Headers
from werkzeug.test import Client

from helpers import form_data, forms

POLICIES = {"no-referrer", "no-referrer-when-downgrade", "same-origin", "origin", "strict-origin",
            "origin-when-cross-origin", "strict-origin-when-cross-origin", "unsafe-url"}
DEFAULT_POLICY = "strict-origin-when-cross-origin"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
LAX_POST_SECONDS = 120


class Blocked(AssertionError):
    """Chromium would refuse this request (CSP form-action) and show its own error page."""


# -- URLs, origins and sites ----------------------------------------------------------------------

def origin_of(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def serialize_origin(origin: tuple[str, str, int]) -> str:
    scheme, host, port = origin
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" + ("" if port == default else f":{port}")


def site_of(url: str) -> tuple[str, str]:
    """Schemeful site, with the host's last two labels standing in for the registrable domain."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    labels = host.split(".")
    registrable = host if host.replace(".", "").isdigit() else ".".join(labels[-2:])
    return parts.scheme, registrable


def trustworthy(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or parts.hostname in ("localhost", "127.0.0.1", "::1")


def parse_policy(value: str | None) -> str | None:
    """The last recognised token of a Referrer-Policy header (Referrer Policy §8.1), or None."""
    found = None
    for token in (value or "").split(","):
        token = token.strip().lower()
        if token in POLICIES:
            found = token
    return found


def _strip(url: str, origin_only: bool) -> str | None:
    """Referrer Policy's "strip url for use as a referrer"."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    if origin_only:
        return f"{parts.scheme}://{netloc}/"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def determine_referrer(referrer: str, policy: str, current: str) -> str | None:
    """Referrer Policy §8.3 "determine request's referrer" for a referrer URL, a policy and the current URL."""
    full, origin = _strip(referrer, False), _strip(referrer, True)
    if full is None:
        return None
    if len(full) > 4096:
        full = origin
    same = origin_of(referrer) == origin_of(current)
    downgrade = trustworthy(referrer) and not trustworthy(current)
    if policy == "no-referrer":
        return None
    if policy == "origin":
        return origin
    if policy == "unsafe-url":
        return full
    if policy == "strict-origin":
        return None if downgrade else origin
    if policy == "strict-origin-when-cross-origin":
        return full if same else (None if downgrade else origin)
    if policy == "same-origin":
        return full if same else None
    if policy == "origin-when-cross-origin":
        return full if same else origin
    if policy == "no-referrer-when-downgrade":
        return None if downgrade else full
    raise ValueError(policy)


def origin_header(origin: tuple[str, str, int], tainted: bool, policy: str, current: str) -> str:
    """Fetch §3.1 "append a request `Origin` header" for a navigation that is not GET or HEAD."""
    value = "null" if tainted else serialize_origin(origin)
    if policy == "no-referrer":
        return "null"
    if policy in ("no-referrer-when-downgrade", "strict-origin", "strict-origin-when-cross-origin"):
        if origin[0] == "https" and urlsplit(current).scheme != "https":
            return "null"
    if policy == "same-origin" and origin != origin_of(current):
        return "null"
    return value


def _directive(csp: str | None, *names: str) -> list[str] | None:
    """The sources of the first of `names` (a directive and its fallbacks) the policy has, or None."""
    found = {}
    for directive in (csp or "").split(";"):
        name, *values = directive.split() or [""]
        found.setdefault(name.lower(), values)
    return next((found[n] for n in names if n in found), None)


def form_action_allows(csp: str | None, page_url: str, target: str) -> bool:
    """Whether a page's CSP `form-action` lets a form go to `target` (for the source forms the portal uses)."""
    sources = _directive(csp, "form-action")
    return sources is None or _sources_allow(sources, page_url, target)


def frame_src_allows(csp: str | None, page_url: str, target: str) -> bool:
    """Whether a page's CSP lets it load `target` in an iframe (frame-src, else child-src, else default-src)."""
    sources = _directive(csp, "frame-src", "child-src", "default-src")
    return sources is None or _sources_allow(sources, page_url, target)


def may_be_framed(headers: Headers, url: str, ancestors: list[str]) -> bool:
    """Whether a response lets the pages `ancestors` (URLs) frame it: CSP frame-ancestors, else X-Frame-Options."""
    sources = _directive(headers.get("Content-Security-Policy"), "frame-ancestors")
    if sources is not None:
        return all(_sources_allow(sources, url, ancestor) for ancestor in ancestors)
    option = (headers.get("X-Frame-Options") or "").strip().lower()
    if option == "deny":
        return False
    if option == "sameorigin":
        return all(origin_of(ancestor) == origin_of(url) for ancestor in ancestors)
    return True


def _sources_allow(sources: list[str], page_url: str, target: str) -> bool:
    """Whether a CSP source list (of the kinds the portal and the emulator use) matches `target`."""
    t_scheme, t_host, t_port = origin_of(target)
    for source in sources:
        if source == "*":
            if t_scheme in ("http", "https"):
                return True
        elif source == "'self'":
            p_scheme, p_host, p_port = origin_of(page_url)
            # 'self' also matches the https upgrade of an http page.
            if t_host == p_host and (t_scheme, t_port) in ((p_scheme, p_port), ("https", 443)):
                return True
        elif source.endswith(":") and "/" not in source:
            if t_scheme == source[:-1]:
                return True
        elif "://" in source:
            if origin_of(source) == (t_scheme, t_host, t_port):
                return True
    return False


class _Frames(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        src = dict(attrs).get("src")
        if tag == "iframe" and src:
            self.sources.append(src)


# -- cookies --------------------------------------------------------------------------------------

@dataclass
class Cookie:
    name: str
    value: str
    domain: str
    host_only: bool
    path: str
    secure: bool
    http_only: bool
    same_site: str  # "strict", "lax", "none", or "unspecified" (treated as Lax)
    created: float = field(default_factory=time.monotonic)


def _default_path(url: str) -> str:
    path = urlsplit(url).path
    if not path.startswith("/") or path.count("/") == 1:
        return "/"
    return path[:path.rindex("/")]


def _domain_match(host: str, domain: str) -> bool:
    return host == domain or (host.endswith("." + domain) and not host.replace(".", "").isdigit())


def _path_match(request_path: str, cookie_path: str) -> bool:
    if request_path == cookie_path:
        return True
    return request_path.startswith(cookie_path) and (cookie_path.endswith("/") or
                                                     request_path[len(cookie_path)] == "/")


class CookieJar:
    def __init__(self) -> None:
        self.cookies: dict[tuple[str, str, str], Cookie] = {}

    def set_from(self, header: str, url: str) -> None:
        """Store (or delete, or ignore) one Set-Cookie header received from `url`."""
        pair, *attributes = header.split(";")
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            return
        attrs: dict[str, str] = {}
        for attribute in attributes:
            key, _, val = attribute.partition("=")
            attrs[key.strip().lower()] = val.strip()
        parts = urlsplit(url)
        host, secure_origin = (parts.hostname or "").lower(), parts.scheme == "https"
        secure = "secure" in attrs
        if secure and not secure_origin:
            return  # only a secure origin may set a Secure cookie
        domain = attrs.get("domain", "").lstrip(".").lower()
        if domain and not _domain_match(host, domain):
            return
        path = attrs.get("path") or ""
        if not path.startswith("/"):
            path = _default_path(url)
        if name.startswith("__Secure-") and not (secure and secure_origin):
            return
        if name.startswith("__Host-") and not (secure and secure_origin and not domain and path == "/"):
            return
        same_site = attrs.get("samesite", "").lower()
        if same_site not in ("strict", "lax", "none"):
            same_site = "unspecified"
        if same_site == "none" and not secure:
            return
        key = (name, domain or host, path)
        expired = False
        if "max-age" in attrs:
            try:
                expired = int(attrs["max-age"]) <= 0
            except ValueError:
                pass
        elif "expires" in attrs:
            try:
                expired = email.utils.parsedate_to_datetime(attrs["expires"]) <= datetime.now(timezone.utc)
            except (TypeError, ValueError):
                pass
        if expired:
            self.cookies.pop(key, None)
            return
        old = self.cookies.get(key)
        if old is not None and old.secure and not secure_origin:
            return  # an insecure origin may not overwrite a Secure cookie
        self.cookies[key] = Cookie(name, value, domain or host, not domain, path, secure, "httponly" in attrs,
                                   same_site)

    def header_for(self, url: str, *, same_site: bool, method: str) -> str | None:
        """The Cookie header of a top-level navigation to `url`."""
        parts = urlsplit(url)
        host, path = (parts.hostname or "").lower(), parts.path or "/"
        chosen = []
        for c in self.cookies.values():
            if not (host == c.domain if c.host_only else _domain_match(host, c.domain)):
                continue
            if not _path_match(path, c.path) or (c.secure and parts.scheme != "https"):
                continue
            if not same_site:
                if c.same_site == "strict":
                    continue
                unsafe = method not in ("GET", "HEAD", "OPTIONS", "TRACE")
                if c.same_site == "lax" and unsafe:
                    continue
                if c.same_site == "unspecified" and unsafe and time.monotonic() - c.created > LAX_POST_SECONDS:
                    continue
            chosen.append(c)
        chosen.sort(key=lambda c: (-len(c.path), c.created))
        return "; ".join(f"{c.name}={c.value}" for c in chosen) or None

    def get(self, name: str) -> Cookie | None:
        return next((c for c in self.cookies.values() if c.name == name), None)


# -- pages and the browser ------------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._text = dict(attrs).get("href"), ""

    def handle_data(self, data):
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((" ".join(self._text.split()), self._href))
            self._href = None


@dataclass
class Page:
    url: str
    status: int
    headers: Headers
    body: bytes
    frames: list["Frame"] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def policy(self) -> str:
        return parse_policy(self.headers.get("Referrer-Policy")) or DEFAULT_POLICY

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    def __contains__(self, text: str) -> bool:
        return text in self.text


@dataclass
class Frame:
    """An iframe of a page: the URL its src led to, the answer's status, and whether the browser showed it (the
    page's CSP let it load it and the answer let the page frame it); `blocked` says which refused."""
    url: str
    status: int
    shown: bool
    blocked: str | None = None


@dataclass
class Sent:
    """One request as it left the browser, and its answer's status."""
    method: str
    url: str
    headers: dict[str, str]
    status: int = 0


class Browser:
    """One browser profile: its cookies, HSTS hosts, current page and the requests it sent."""

    def __init__(self, sites: dict[str, object], *, remote_addr: str = "127.0.0.1") -> None:
        self.sites = {host.lower(): Client(app, use_cookies=False) for host, app in sites.items()}
        self.remote_addr = remote_addr
        self.jar = CookieJar()
        self.hsts: dict[str, bool] = {}  # host -> includeSubDomains
        self.page: Page | None = None
        self.download: Page | None = None
        self.sent: list[Sent] = []

    # -- what a person does
    def goto(self, url: str) -> Page:
        """Type a URL into the address bar (no referrer, no initiator: same-site for cookies)."""
        return self._navigate("GET", url, None, initiator=None)

    def click(self, label: str) -> Page:
        """Follow the link whose text is `label` on the current page."""
        for text, href in self._links():
            if text == label:
                return self._navigate("GET", urljoin(self.page.url, href), None, initiator=self.page)
        raise AssertionError(f"no link {label!r} on {self.page.url}:\n{self.page.text[:2000]}")

    def submit(self, button: str, *, fields: dict | None = None, checks: dict | None = None,
               radio: dict | None = None) -> Page:
        """Press the button labelled `button`: the HTML form's own action, method and fields (CSRF token too)."""
        page = self.page
        for form in forms(page.body):
            for name, value, label in form["buttons"]:
                if label != button:
                    continue
                unknown = set(fields or {}) - set(form["fields"])
                assert not unknown, f"a person can only fill fields the form has, not {sorted(unknown)}"
                offered = {n: v for n, v in (fields or {}).items() if n in form["selects"]}
                assert all(v in form["selects"][n] for n, v in offered.items()), \
                    f"a person can only choose an option the list offers, not {offered}"
                data = form_data(form, name, value, fields=fields, checks=checks, radio=radio)
                action = urljoin(page.url, form["action"] or page.url)
                csp = page.headers.get("Content-Security-Policy")
                if form["method"] == "post":
                    return self._navigate("POST", action, urlencode(data).encode(), initiator=page, csp=csp)
                target = urlunsplit(urlsplit(action)._replace(query=urlencode(data), fragment=""))
                return self._navigate("GET", target, None, initiator=page, csp=csp)
        raise AssertionError(f"no button {button!r} on {page.url}:\n{page.text[:2000]}")

    def cookie(self, name: str) -> Cookie | None:
        return self.jar.get(name)

    # -- how Chromium does it
    def _links(self) -> list[tuple[str, str]]:
        parser = _Links()
        parser.feed(self.page.text)
        return parser.links

    def _upgrade(self, url: str) -> str:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        known = any(host == h or (sub and host.endswith("." + h)) for h, sub in self.hsts.items())
        if parts.scheme == "http" and known:
            return urlunsplit(parts._replace(scheme="https", netloc=host + (f":{parts.port}" if parts.port else "")))
        return url

    def _navigate(self, method: str, url: str, body: bytes | None, *, initiator: Page | None,
                  csp: str | None = None) -> Page:
        referrer = initiator.url if initiator else None
        policy = initiator.policy if initiator else DEFAULT_POLICY
        origin = origin_of(initiator.url) if initiator else None
        tainted = False
        chain = [initiator.url] if initiator else []
        for _ in range(20):
            url = self._upgrade(url)
            if csp is not None and not form_action_allows(csp, initiator.url, url):
                raise Blocked(f"CSP form-action of {initiator.url} blocks {url} ({csp})")
            if referrer is not None:
                referrer = determine_referrer(referrer, policy, url)
            headers = {"User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
            if referrer:
                headers["Referer"] = referrer
            if method not in ("GET", "HEAD") and origin is not None:
                headers["Origin"] = origin_header(origin, tainted, policy, url)
            if body is not None:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            same_site = all(site_of(u) == site_of(url) for u in chain)
            cookie = self.jar.header_for(url, same_site=same_site, method=method)
            if cookie:
                headers["Cookie"] = cookie
            response = self._send(method, url, headers, body)
            status, location = response.status_code, response.headers.get("Location")
            if status in (301, 302, 303, 307, 308) and location:
                target = urljoin(url, location)
                if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                if origin is not None and origin_of(url) != origin_of(target) and origin != origin_of(target):
                    tainted = True
                policy = parse_policy(response.headers.get("Referrer-Policy")) or policy
                chain.append(url)
                url = target
                continue
            page = Page(url, status, response.headers, response.get_data())
            if "attachment" in response.headers.get("Content-Disposition", ""):
                self.download = page  # a download leaves the current page where it is
                return page
            page.frames = self._load_frames(page)
            self.page = page
            return page
        raise AssertionError(f"too many redirects, last {url}")

    def _load_frames(self, page: Page) -> list[Frame]:
        """Load the page's iframes (one level) as Chromium does with third-party cookies blocked: a frame of another
        site than the page gets no cookies and sets none; redirects are followed; the answer's frame-ancestors (or
        X-Frame-Options) decide whether it is shown, but the request has been made either way."""
        parser = _Frames()
        parser.feed(page.text)
        frames = []
        for src in parser.sources:
            url = self._upgrade(urljoin(page.url, src))
            if not frame_src_allows(page.headers.get("Content-Security-Policy"), page.url, url):
                frames.append(Frame(url, 0, False, "the page's CSP frame-src"))
                continue
            referrer, policy = page.url, page.policy
            for _ in range(20):
                first_party = site_of(url) == site_of(page.url)
                headers = {"User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
                referrer = determine_referrer(referrer, policy, url) if referrer else None
                if referrer:
                    headers["Referer"] = referrer
                cookie = self.jar.header_for(url, same_site=True, method="GET") if first_party else None
                if cookie:
                    headers["Cookie"] = cookie
                response = self._send("GET", url, headers, None, store_cookies=first_party)
                location = response.headers.get("Location")
                if response.status_code in (301, 302, 303, 307, 308) and location:
                    policy = parse_policy(response.headers.get("Referrer-Policy")) or policy
                    url = self._upgrade(urljoin(url, location))
                    continue
                shown = may_be_framed(response.headers, url, [page.url])
                frames.append(Frame(url, response.status_code, shown, None if shown else "the answer's framing rules"))
                break
        return frames

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None, *,
              store_cookies: bool = True):
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host not in self.sites:
            raise AssertionError(f"the browser cannot reach {url}: no server for {host}")
        sent = Sent(method, url, dict(headers))
        self.sent.append(sent)
        path = parts.path or "/"
        response = self.sites[host].open(path + (f"?{parts.query}" if parts.query else ""), method=method,
                                         base_url=f"{parts.scheme}://{parts.netloc}", headers=headers, data=body,
                                         environ_base={"REMOTE_ADDR": self.remote_addr})
        response.get_data()
        response.close()
        sent.status = response.status_code
        for header in response.headers.getlist("Set-Cookie") if store_cookies else ():
            self.jar.set_from(header, url)
        hsts = response.headers.get("Strict-Transport-Security")
        if hsts and parts.scheme == "https":
            directives = {d.strip().lower().partition("=")[0]: d.strip().partition("=")[2] for d in hsts.split(";")}
            if directives.get("max-age", "0").strip('"').isdigit() and int(directives["max-age"].strip('"')) > 0:
                self.hsts[host] = "includesubdomains" in directives
            else:
                self.hsts.pop(host, None)
        return response


class PortalBrowser(Browser):
    """The browser plus the steps a person takes on the portal and on Microsoft's pages."""

    def __init__(self, sites: dict[str, object], portal_url: str, **kwargs) -> None:
        super().__init__(sites, **kwargs)
        self.portal_url = portal_url.rstrip("/")

    def open(self, path: str) -> Page:
        return self.goto(self.portal_url + path)

    def sign_in_locally(self, email: str, password: str, *, password_link: bool = False) -> Page:
        """The login prompt's email step, then the password step; or "Use a password instead" (SSO domains)."""
        self.open("/login")
        if password_link:
            page = self.click("Use a password instead")
        else:
            page = self.submit("Continue", fields={"email": email})
        assert "Enter your password" in page, page.text[:2000]
        return self.submit("Sign in", fields={"email": email, "password": password})

    def at_microsoft(self, user: str | None = None, *, accept: bool = True, on_behalf: bool = False) -> Page:
        """Act as the person on Microsoft's pages until the browser is back on the portal."""
        microsoft = self.page.host
        for _ in range(6):
            page = self.page
            if page.host != microsoft:
                return page
            if 'name="step" value="signin"' in page:
                self.submit("Sign in", radio={"username": user} if user else None)
            elif 'name="step" value="consent"' in page or 'name="step" value="adminconsent"' in page:
                self.submit("Accept" if accept else "Cancel", checks={"on_behalf": on_behalf})
            else:
                return page
        raise AssertionError("Microsoft's pages kept the browser too long")

    def sso_sign_in(self, email: str, **kwargs) -> Page:
        """Type the email; pass the consent explanation if shown; sign in at Microsoft (if it asks)."""
        portal = urlsplit(self.portal_url).hostname
        self.open("/login")
        start = len(self.sent)
        page = self.submit("Continue", fields={"email": email})
        if page.host == portal and "Continue to Microsoft" in page:
            page = self.submit("Continue to Microsoft")
        assert any(urlsplit(s.url).hostname != portal for s in self.sent[start:]), page.text[:2000]
        return self.at_microsoft(kwargs.pop("user", email), **kwargs)

    def sign_out(self) -> Page:
        self.open("/")
        return self.submit("Sign out")

    def flash(self) -> str:
        """The flashed messages of the current page, as text."""
        return " ".join(re.findall(r'<p class="flash[^"]*" role="status">([^<]*)</p>', self.page.text))
