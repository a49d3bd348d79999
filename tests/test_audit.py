"""The audit log: events for each action, the SECURITY tab's pages, the CLI, and no secrets anywhere."""
from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from domain import audit, directory, passwords
import entra
from helpers import PASSWORD, activate_sso, csrf, password_sign_in, sign_out, sso_sign_in, submit, through_microsoft
from models import AuditEvent, Organization, User, db

GRANT = "Grant admin consent for your organization"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _audit(runner, org="Northwind Traders"):
    result = runner.invoke(args=["audit", "--org", org])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


@pytest.fixture
def wire(app):
    """Everything secret the portal and Microsoft exchange on the back channel: secret, codes, verifiers, tokens."""
    seen: set[str] = {app.config["ENTRA_CLIENT_SECRET"]}

    def note(resp, *args, **kwargs):
        body = resp.request.body or ""
        for name, values in parse_qs(body.decode() if isinstance(body, bytes) else body).items():
            if name in ("client_secret", "code", "code_verifier", "refresh_token"):
                seen.update(values)
        if "Authorization" in resp.request.headers:
            seen.add(resp.request.headers["Authorization"].split()[-1])
        if "/token" in resp.url and resp.headers.get("Content-Type", "").startswith("application/json"):
            seen.update(v for k, v in resp.json().items() if k in ("access_token", "id_token", "refresh_token"))
        return resp

    entra.get_http(app).hooks["response"].append(note)
    return seen


def _states(*responses) -> set[str]:
    return {parse_qs(urlsplit(r.headers["Location"]).query)["state"][0] for r in responses}


def test_every_action_is_audited_without_tokens_or_secrets(app, client, runner, emulator, northwind, wire):
    activate_sso(client)  # tenant bound, SSO activated (an admin sign-in through Microsoft)
    grant = submit(client, client.get("/settings/security"), GRANT)
    states = _states(grant)
    cancelled = submit(client, client.get(grant.headers["Location"]), "Cancel")
    assert client.get(cancelled.headers["Location"]).status_code == 403  # admin consent failed
    grant = submit(client, client.get("/settings/security"), GRANT)
    states |= _states(grant)
    assert through_microsoft(client, grant).status_code == 303  # admin consent granted
    submit(client, client.get("/settings/security"), "Save single sign-on requirement", checks={"require_sso": True})
    submit(client, client.get("/settings/security"), "Save single sign-on requirement", checks={"require_sso": False})
    member = app.test_client()
    go = member.post("/login", data={"email": "lena.fischer@northwind.example", "csrf_token": csrf(member)})
    states |= _states(go)
    assert through_microsoft(member, go, user="lena.fischer@northwind.example").status_code == 303  # sign-in
    emulator.faults["id_token_alg"] = "foreign-key"
    sign_out(member)
    assert sso_sign_in(member, "lena.fischer@northwind.example").status_code == 401  # failed sign-in
    emulator.faults.clear()
    sign_out(client)
    assert password_sign_in(client, "admin@northwind.example", "wrong password!").status_code == 401
    password_sign_in(client, "admin@northwind.example")
    submit(client, client.get("/settings/security"), "Deactivate SSO")
    assert len(wire) >= 8  # the secret, codes, verifiers and tokens really were seen

    with app.app_context():
        events = db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        got = [(e.action, e.outcome) for e in events]
        for expected in [("tenant_bound", "success"), ("sso_activate", "success"), ("admin_consent", "failure"),
                         ("admin_consent", "success"), ("require_sso", "success"), ("user_created", "success"),
                         ("sign_in", "success"), ("sign_in", "failure"), ("sso_deactivate", "success")]:
            assert expected in got, expected
        columns = [c.name for c in AuditEvent.__table__.columns]
        cells = [str(getattr(e, c)) for e in events for c in columns]
    lines = _audit(runner)
    exported = "\n".join(json.dumps(line) for line in lines)
    page = client.get("/settings/security").data.decode() + client.get("/settings/audit").data.decode()
    for secret in wire | states:
        assert len(secret) >= 16
        assert not any(secret in cell for cell in cells)
        assert secret not in exported and secret not in page


def test_audit_log_tab_shows_the_log_newest_first_in_words(app, client, active):
    password_sign_in(client, "admin@northwind.example")
    submit(client, client.get("/settings/security"), "Save single sign-on requirement", checks={"require_sso": True})
    page = client.get("/settings/audit").data.decode()
    assert 'aria-current="page">AUDIT LOG</a>' in page
    log = page[page.index('id="audit-heading"'):]
    for heading in ("Time (UTC)", "Actor", "Action", "Outcome", "Detail", "IP"):
        assert f'<th scope="col">{heading}</th>' in log
    cell = r'\s*<td data-label="[^"]+"[^>]*>([^<]*)</td>'
    rows = re.findall(r'<tr>\s*<td data-label="Time \(UTC\)"><time datetime="([^"]+)">[^<]+</time></td>' + cell * 5, log)
    assert [r[2] for r in rows] == ["Require single sign-on", "Sign-in", "SSO activated", "Tenant bound", "Sign-in"]
    newest = rows[0]
    assert ISO_UTC.match(newest[0])
    assert newest[1:] == ("admin@northwind.example", "Require single sign-on", "Succeeded",
                          "on password_sessions_ended=0", "127.0.0.1")
    assert rows[1][3:5] == ("Succeeded", "with a password")


def test_log_is_paginated(app, client, active):
    with app.app_context():
        org = db.session.get(Organization, active)
        for n in range(56):
            audit.record("sign_in", "failure", org=org, detail=f"reason_{n:02d}")
        db.session.commit()
    password_sign_in(client, "admin@northwind.example")  # 60 events: 3 from activation, 56, this sign-in
    first = client.get("/settings/audit").data.decode()
    assert first.count("<time datetime=") == 25 and "Page 1 of 3" in first
    assert "reason_55" in first and "reason_32" in first and "reason_31" not in first
    assert 'href="/settings/audit?page=2" rel="next">Older</a>' in first and "Newer" not in first
    last = client.get("/settings/audit?page=3").data.decode()
    assert last.count("<time datetime=") == 10 and "Tenant bound" in last and "Older" not in last
    assert 'href="/settings/audit?page=2" rel="prev">Newer</a>' in last
    old_link = client.get("/settings/security?page=3")  # where the pages used to be: bookmarks still work
    assert old_link.status_code == 301 and old_link.headers["Location"] == "/settings/audit?page=3"
    assert client.get("/settings/security").status_code == 200 and "<time datetime=" not in \
        client.get("/settings/security").data.decode()
    for bad in ("0", "4", "-1", "abc", "99999999999999999999"):
        resp = client.get("/settings/audit", query_string={"page": bad})
        assert resp.status_code == 404 and b"The audit log has 3 pages." in resp.data, bad


def test_each_organisation_sees_only_its_own_log(app, client, runner, active):
    with app.app_context():
        directory.create_organization("Fabrikam Research", ["fabrikam.example"])
        passwords.create_local_user("admin@fabrikam.example", "Fabrikam Research", PASSWORD, role="admin")
    other = app.test_client()
    activate_sso(other, admin="admin@fabrikam.example")
    password_sign_in(client, "admin@northwind.example")
    page = client.get("/settings/audit").data
    assert b"admin@fabrikam.example" not in page and page.count(b"<time datetime=") == 4
    assert {line["actor"] for line in _audit(runner)} == {"admin@northwind.example"}
    assert {line["actor"] for line in _audit(runner, "Fabrikam Research")} == {"admin@fabrikam.example"}


def test_cli_prints_json_lines_oldest_first(app, runner, active):
    runner.invoke(args=["deactivate-sso", "--org", "Northwind Traders"])
    lines = _audit(runner)
    assert [(x["action"], x["outcome"]) for x in lines] == [
        ("sign_in", "success"), ("tenant_bound", "success"), ("sso_activate", "success"), ("sso_deactivate", "success")]
    assert all(set(x) == {"time", "actor", "action", "outcome", "detail", "ip"} for x in lines)
    assert all(ISO_UTC.match(x["time"]) for x in lines)
    assert lines[0]["actor"] == "admin@northwind.example" and lines[0]["ip"] == "127.0.0.1"
    assert lines[-1] == {**lines[-1], "actor": "operator (CLI)", "detail": "cli", "ip": None}
    with app.app_context():
        assert len(lines) == db.session.scalar(db.select(db.func.count()).select_from(AuditEvent))


def test_cli_refuses_an_unknown_organisation(runner, northwind):
    result = runner.invoke(args=["audit", "--org", "Nobody"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_members_cannot_read_the_log(app, client, active):
    with app.app_context():
        passwords.create_local_user("omar.haddad@northwind.example", "Northwind Traders", PASSWORD, role="member")
    password_sign_in(client, "omar.haddad@northwind.example")
    assert client.get("/settings/security?page=1").status_code == 403
    assert client.get("/settings/audit").status_code == 403


def test_a_deleted_actor_leaves_the_event(app, client, runner, active):
    with app.app_context():
        user = passwords.create_local_user("omar.haddad@northwind.example", "Northwind Traders", PASSWORD,
                                          role="member")
        audit.record("sign_in", "success", org=user.organization, actor=user, detail="password")
        db.session.commit()
        db.session.delete(db.session.get(User, user.id))
        db.session.commit()
    assert _audit(runner)[-1]["actor"] is None
