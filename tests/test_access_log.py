"""The access log the README recommends keeps no query strings: the callbacks carry Microsoft's code and state.

Runs gunicorn with the README's own command (its log settings unchanged) and nginx with the README's log_format.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest
import requests

from helpers import ROOT, TEST_KEY, free_port, readme_block, readme_gunicorn

SECRETS = ("SECRET-CODE-0xq", "SECRET-STATE-7kz", "SECRET-CONSENT-STATE-3mw", "someone%40example.com")
CALLBACKS = ("/auth/callback?code=SECRET-CODE-0xq&state=SECRET-STATE-7kz&session_state=abc",
             "/auth/admin-consent/callback?admin_consent=True&tenant=x&state=SECRET-CONSENT-STATE-3mw",
             "/login?next=%2Fprofile%2F&login_hint=someone%40example.com")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def _wait(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            requests.get(url, timeout=10)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


def _visit(base: str) -> None:
    for path in CALLBACKS:
        requests.get(base + path, timeout=30, allow_redirects=False)


def test_gunicorn_with_the_readmes_access_log_drops_the_callbacks_query(tmp_path):
    port = free_port()
    config = {"DEMO_MODE": True, "SECRET_KEY": "t" * 48, "ENCRYPTION_KEYS": [TEST_KEY],
              "SERVER_NAME": f"127.0.0.1:{port}", "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/portal.sqlite"}
    args = readme_gunicorn(port, instance_path=str(tmp_path / "instance"), workers=1, config=config)
    assert "--access-logfile" in args
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(f"http://127.0.0.1:{port}/healthz", proc)
        _visit(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    lines = [line for line in out.splitlines() if "/auth/" in line or "/login" in line]
    assert len(lines) == 3, out
    assert '"GET /auth/callback HTTP/1.1" 400' in lines[0]
    assert '"GET /auth/admin-consent/callback HTTP/1.1" 400' in lines[1]
    assert '"GET /login HTTP/1.1" 200' in lines[2]
    for secret in SECRETS:
        assert secret not in out and secret not in err


@pytest.mark.skipif(NGINX is None and os.environ.get("CI") != "true", reason="nginx is not installed")
def test_nginx_with_the_readmes_log_format_drops_the_callbacks_query(tmp_path):
    block = readme_block("nginx")
    log_format = re.search(r"^\s*(log_format\s+(\w+)\s.*?;)\s*$", block, re.S | re.M)
    assert log_format, "no log_format in the README's nginx block"
    assert re.search(rf"^\s*access_log\s+\S+\s+{log_format.group(2)};", block, re.M), "access_log does not use it"
    port, log = free_port(), tmp_path / "access.log"
    temp = "".join(f"{kind}_temp_path {tmp_path}/{kind};\n" for kind in
                   ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(f"""
        pid {tmp_path}/nginx.pid;
        error_log {tmp_path}/error.log;
        events {{ }}
        http {{
            {temp}
            {log_format.group(1)}
            server {{
                listen 127.0.0.1:{port};
                access_log {log} {log_format.group(2)};
                location / {{ return 200 "ok"; }}
            }}
        }}
    """)
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(f"http://127.0.0.1:{port}/healthz", proc)
        _visit(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    text = log.read_text()
    assert '"GET /auth/callback HTTP/1.1" 200' in text and '"GET /auth/admin-consent/callback HTTP/1.1" 200' in text
    for secret in SECRETS:
        assert secret not in text
