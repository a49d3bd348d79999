"""The operator's user commands: users, set-role, block, unblock, remove; the same rules as the USERS tab."""
from __future__ import annotations

import json

from domain import passwords
from helpers import PASSWORD, password_sign_in, signed_in
from models import User, db

NORTHWIND = "Northwind Traders"
ADMIN = "admin@northwind.example"
MEMBER = "member@northwind.example"


def _refused(result, *words):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for word in words:
        assert word in result.output, (word, result.output)


def _ok(runner, *args):
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _audit(runner):
    return [json.loads(line) for line in _ok(runner, "audit", "--org", NORTHWIND).splitlines()]


def _member(app):
    with app.app_context():
        passwords.create_local_user(MEMBER, NORTHWIND, PASSWORD, role="member")


def test_users_prints_json_lines(app, runner, client, northwind):
    _member(app)
    password_sign_in(client, ADMIN)
    rows = [json.loads(line) for line in _ok(runner, "users", "--org", "northwind traders").splitlines()]
    assert [r["email"] for r in rows] == [ADMIN, MEMBER]  # newest sign-in first, never signed in last
    assert rows[0]["role"] == "admin" and rows[0]["status"] == "active" and rows[0]["sign_in"] == "password"
    assert rows[0]["last_sign_in"].endswith("Z") and rows[1]["last_sign_in"] is None
    _refused(runner.invoke(args=["users", "--org", "Nobody"]), "No organisation")


def test_set_role_block_unblock_remove(app, runner, client, northwind):
    _member(app)
    assert "now an admin" in _ok(runner, "set-role", MEMBER, "--org", NORTHWIND, "admin")
    assert "now a member" in _ok(runner, "set-role", MEMBER, "--org", NORTHWIND, "member")
    password_sign_in(client, MEMBER)
    assert "1 session ended" in _ok(runner, "block", MEMBER, "--org", NORTHWIND)
    assert not signed_in(client)
    assert password_sign_in(client, MEMBER).status_code == 403
    assert "can sign in again" in _ok(runner, "unblock", MEMBER, "--org", NORTHWIND)
    assert password_sign_in(client, MEMBER).status_code == 303
    _refused(runner.invoke(args=["remove", MEMBER, "--org", NORTHWIND]), "--yes")
    assert "Removed member@northwind.example" in _ok(runner, "remove", MEMBER, "--org", NORTHWIND, "--yes")
    assert not signed_in(client)
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(User)) == 1
    events = [(e["action"], e["outcome"]) for e in _audit(runner) if e["actor"] == "operator (CLI)"]
    assert events == [(a, "success") for a in
                      ("role_changed", "role_changed", "user_blocked", "user_unblocked", "user_removed")]


def test_the_last_admin_is_kept(app, runner, northwind):
    for args in (["set-role", ADMIN, "--org", NORTHWIND, "member"], ["block", ADMIN, "--org", NORTHWIND],
                 ["remove", ADMIN, "--org", NORTHWIND, "--yes"]):
        _refused(runner.invoke(args=args), "only active administrator")
    with app.app_context():
        admin = db.session.execute(db.select(User)).scalar_one()
        assert (admin.role, admin.blocked) == ("admin", False)
    assert [e["detail"] for e in _audit(runner) if e["outcome"] == "failure"] == [f"user {admin.id} last_admin"] * 3


def test_bad_input_is_one_error_line(app, runner, northwind):
    _refused(runner.invoke(args=["block", "nobody@northwind.example", "--org", NORTHWIND]), "has no user")
    _refused(runner.invoke(args=["block", "@@@", "--org", NORTHWIND]))
    result = runner.invoke(args=["set-role", ADMIN, "--org", NORTHWIND, "owner"])
    assert result.exit_code == 2 and "owner" in result.output
