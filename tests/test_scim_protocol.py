"""The SCIM endpoint's edge: discovery, tokens, errors, limits, logs, keys, production configuration, and one
provisioning cycle of the emulator (Entra's request sequence) against the real endpoint."""
from __future__ import annotations

import json
import logging

import pytest

from app import create_app
from domain import keys, provisioning
from domain.policy import OPERATOR, PROVISIONING_NAME
from emulator.transport import WSGIAdapter
from helpers import NORTHWIND_TID, PRODUCTION, dump_database
from models import AuditEvent, Organization, ScimGroup, User, db
from scim_client import ENTERPRISE, GROUP_SCHEMA, ScimClient, is_scim_error, user_body

LENA = "lena.fischer@northwind.example"
LENA_OID = "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"
OMAR_OID = "2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03"
SALES = "8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c01"


def test_discovery_endpoints(scim):
    config = scim.get("/ServiceProviderConfig")
    assert config.status_code == 200 and config.mimetype == "application/scim+json"
    assert config.json["patch"] == {"supported": True} and config.json["bulk"]["supported"] is False
    assert config.json["filter"] == {"supported": True, "maxResults": 100}
    assert config.json["authenticationSchemes"][0]["type"] == "oauthbearertoken"
    types = scim.get("/ResourceTypes").json
    assert {t["id"] for t in types["Resources"]} == {"User", "Group"}
    user_type = scim.get("/ResourceTypes/User").json
    assert user_type["schemaExtensions"][0]["schema"] == ENTERPRISE
    schemas = {s["id"] for s in scim.get("/Schemas").json["Resources"]}
    assert schemas == {"urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE, GROUP_SCHEMA}
    assert scim.get(f"/Schemas/{ENTERPRISE}").json["name"] == "EnterpriseUser"
    assert is_scim_error(scim.get("/Schemas/urn:nothing"), 404)
    assert is_scim_error(scim.get("/Nothing"), 404)


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"a string"', ""])
def test_bad_json_is_invalid_syntax_and_stores_nothing(app, scim, raw):
    before = dump_database(app)
    for method, path in (("POST", "/Users"), ("POST", "/Groups"), ("PATCH", "/Users/x"), ("PUT", "/Groups/x")):
        assert is_scim_error(scim.request(method, path, raw=raw), 400, "invalidSyntax"), (method, path)
    assert _without_last_call(dump_database(app)) == _without_last_call(before)


def _without_last_call(dump: dict) -> dict:
    """The organisation's "Entra last called" time is the one thing a refused request may write."""
    return {table: rows for table, rows in dump.items() if table != "organizations"}


def test_unknown_attributes_are_refused(app, scim):
    resp = scim.post("/Users", user_body(LENA, LENA_OID, favouriteColour="green"))
    assert is_scim_error(resp, 400, "invalidSyntax") and "favouriteColour" in resp.json["detail"]
    lena = scim.create_user(LENA, LENA_OID)
    resp = scim.patch(f"/Users/{lena['id']}", {"op": "Add", "path": "favouriteColour", "value": "green"})
    assert resp.status_code == 400 and resp.json["scimType"] in ("invalidPath", "invalidSyntax", "noTarget")
    assert is_scim_error(scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "X", "owner": "y"}),
                         400, "invalidSyntax")
    assert is_scim_error(scim.post("/Users", {"schemas": [ENTERPRISE]}), 400, "invalidValue")


@pytest.mark.parametrize("expression", ['userName sw "lena"', 'userName eq "a" or userName eq "b"',
                                        'displayName eq "Lena"', 'title eq "x"', "userName eq", "((",
                                        'emails[type eq "home"].value eq "x@northwind.example"', "externalId pr",
                                        'not (userName eq "x")', 'userName gt "a"'])
def test_unsupported_or_broken_user_filters_are_invalid_filter(scim, expression):
    resp = scim.client.get("/scim/v2/Users", query_string={"filter": expression},
                           headers={"Authorization": f"Bearer {scim.token}"})
    assert is_scim_error(resp, 400, "invalidFilter"), resp.json


@pytest.mark.parametrize("expression", ['userName eq "x"', 'displayName sw "S"', 'members eq "x"'])
def test_unsupported_group_filters_are_invalid_filter(scim, expression):
    resp = scim.client.get("/scim/v2/Groups", query_string={"filter": expression},
                           headers={"Authorization": f"Bearer {scim.token}"})
    assert is_scim_error(resp, 400, "invalidFilter"), resp.json


def test_wrong_missing_or_revoked_tokens_are_401_and_change_nothing(app, scim, active):
    lena = scim.create_user(LENA, LENA_OID)
    before = dump_database(app)
    attempts = [
        lambda: scim.post("/Users", user_body("omar.haddad@northwind.example", OMAR_OID), token="wrong"),
        lambda: scim.patch(f"/Users/{lena['id']}", {"op": "Replace", "path": "active", "value": "False"},
                           token=scim.token + "x"),
        lambda: scim.delete(f"/Users/{lena['id']}", token=""),
        lambda: scim.client.get("/scim/v2/Users"),
        lambda: scim.client.get("/scim/v2/ServiceProviderConfig", headers={"Authorization": f"Basic {scim.token}"}),
    ]
    for attempt in attempts:
        resp = attempt()
        assert is_scim_error(resp, 401) and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert dump_database(app) == before
    with app.app_context():
        new = provisioning.generate_token(db.session.get(Organization, active), OPERATOR)  # rotate
    assert is_scim_error(scim.get("/Users"), 401)
    assert ScimClient(scim.client, new).get("/Users").status_code == 200
    with app.app_context():
        provisioning.turn_off(db.session.get(Organization, active), OPERATOR)
    assert is_scim_error(ScimClient(scim.client, new).get("/Users"), 401)
    with app.app_context():  # provisioned users stay when provisioning is turned off
        assert db.session.execute(db.select(User).where(User.scim_id == lena["id"])).scalar_one()


def test_a_token_stops_working_when_sso_is_deactivated(app, scim, active):
    with app.app_context():
        org = db.session.get(Organization, active)
        org.sso_active = False
        db.session.commit()
        with pytest.raises(Exception, match="single sign-on"):
            provisioning.generate_token(org, OPERATOR)
    assert is_scim_error(scim.get("/Users"), 401)


def test_token_is_stored_only_as_its_hash(app, scim, active):
    with app.app_context():
        org = db.session.get(Organization, active)
        assert org.scim_token_hash == provisioning.token_hash(scim.token) and scim.token not in org.scim_token_hash
        assert org.scim_token_created_at is not None
        events = db.session.execute(db.select(AuditEvent).where(AuditEvent.action == "scim_token_generated")).scalars()
        assert [e.by_operator for e in events] == [True]


def test_last_call_is_written_at_most_once_a_minute(app, scim, active):
    scim.get("/Users")
    with app.app_context():
        first = db.session.get(Organization, active).scim_last_call_at
    scim.get("/Users")
    with app.app_context():
        assert first is not None and db.session.get(Organization, active).scim_last_call_at == first


def test_responses_set_no_cookie_and_keep_the_security_headers(scim):
    for resp in (scim.get("/Users"), scim.post("/Users", user_body(LENA, LENA_OID)), scim.get("/Users", token="x")):
        assert "Set-Cookie" not in resp.headers
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


def test_a_cross_site_origin_header_does_not_matter(scim):
    # Bearer-token requests carry no ambient credentials: the forms' Origin check does not apply here.
    resp = scim.post("/Users", user_body(LENA, LENA_OID), headers={"Origin": "https://elsewhere.example"})
    assert resp.status_code == 201


def test_body_limit_is_413(app, scim):
    app.config["SCIM_MAX_CONTENT_LENGTH"] = 2000
    resp = scim.post("/Users", user_body(LENA, LENA_OID, title="x" * 3000))
    assert is_scim_error(resp, 413)
    assert scim.get("/Users").json["totalResults"] == 0


def test_a_patch_of_hundreds_of_members_fits_the_default_body_limit(scim):
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "Add", "path": "members", "value": [{"value": "x" * 22} for _ in range(2000)]}]}
    assert len(json.dumps(body)) > 64 * 1024  # more than the pages' MAX_CONTENT_LENGTH
    group = scim.create_group("Everyone")
    assert is_scim_error(scim.request("PATCH", f"/Groups/{group['id']}", body), 400, "invalidValue")  # not 413


def test_rate_limit_is_429_per_token(app, scim, active):
    app.config["RATELIMIT_SCIM"] = "5 per minute"  # read at each request
    for _ in range(4):  # the fixture's POST of the token was no SCIM request; five are allowed
        assert scim.get("/Users").status_code == 200
    assert scim.get("/ServiceProviderConfig").status_code == 200
    resp = scim.get("/Users")
    assert is_scim_error(resp, 429) and "Retry-After" in resp.headers
    with app.app_context():
        other = provisioning.generate_token(db.session.get(Organization, active), OPERATOR)
    assert ScimClient(scim.client, other).get("/Users").status_code == 200  # counted per token


def test_the_rate_count_leaves_the_pooled_connections_waiting_for_the_disk(app, scim):
    """The count's commit does not wait for the disk (a minute's count need not outlive a power cut); every other
    write on the same pooled connections still does."""
    for _ in range(3):
        assert scim.get("/Users").status_code == 200
    with app.app_context():
        connections = [db.engine.connect() for _ in range(3)]  # the pool's connections, the counting ones among them
        try:
            for conn in connections:
                if conn.dialect.name == "sqlite":
                    assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL, SQLite's default
                else:  # the server's own setting (SET LOCAL ended with the count's transaction)
                    assert conn.exec_driver_sql("SELECT current_setting('synchronous_commit') = reset_val FROM "
                                                "pg_settings WHERE name = 'synchronous_commit'").scalar()
        finally:
            for conn in connections:
                conn.close()


def test_nothing_from_bodies_filters_or_paths_is_logged(app, scim, caplog):
    caplog.set_level(logging.DEBUG)
    secret_name, secret_ext = "zebra.quokka@northwind.example", "ext-SECRET-4711"
    scim.post("/Users", user_body(secret_name, secret_ext, title="Title-SECRET"))
    scim.post("/Users", user_body(secret_name, secret_ext))  # 409
    scim.find("Users", f'userName eq "{secret_name}"')
    scim.client.get("/scim/v2/Users", query_string={"filter": 'userName sw "SECRET-FILTER"'},
                    headers={"Authorization": f"Bearer {scim.token}"})
    scim.post("/Users", user_body(secret_name, secret_ext, unknownSECRET="x"))
    scim.request("POST", "/Users", raw='{"SECRET-RAW": ')
    scim.get("/Users/SECRET-PATH-ID")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("zebra", "SECRET", scim.token):
        assert secret not in logged
    assert "409" in logged and "uniqueness" in logged  # ids and scimTypes are logged


def test_audit_log_names_microsoft_entra_provisioning(app, scim, active):
    from domain import auditlog
    scim.create_user(LENA, LENA_OID)
    with app.app_context():
        page = auditlog.audit_page(db.session.get(Organization, active), 1, OPERATOR)
        entry = next(e for e in page.entries if e.action == "scim_user_created")
        assert entry.actor == PROVISIONING_NAME == "Microsoft Entra provisioning" and entry.label == "User provisioned"


def test_rotate_keys_reseals_scim_data_and_group_names(tmp_path, database_uri):
    import vault
    old, new = vault.generate_key(), vault.generate_key()
    config = {"TESTING": True, "DEMO_MODE": True, "SERVER_NAME": "portal.test", "SECRET_KEY": "t" * 48}
    if database_uri:
        config["SQLALCHEMY_DATABASE_URI"] = database_uri
    instance = str(tmp_path / "instance")
    first = create_app({**config, "ENCRYPTION_KEYS": [old]}, instance_path=instance)
    with first.app_context():
        from domain import directory
        org = directory.create_organization("Northwind Traders", ["northwind.example"])
        org.sso_active = True
        db.session.commit()
        token = provisioning.generate_token(org, OPERATOR)
    scim = ScimClient(first.test_client(), token)
    lena = scim.create_user(LENA, LENA_OID)
    group = scim.create_group("Sales team", members=[lena["id"]])
    with first.app_context():
        db.engine.dispose()
    second = create_app({**config, "ENCRYPTION_KEYS": [new, old]}, instance_path=instance)
    with second.app_context():
        report = keys.rotate_keys()
        assert report["scim_groups"].reencrypted == 1 and report["users"].reencrypted == 1
        db.engine.dispose()
    third = create_app({**config, "ENCRYPTION_KEYS": [new]}, instance_path=instance)
    scim = ScimClient(third.test_client(), token)
    got = scim.get(f"/Users/{lena['id']}").json
    assert got["displayName"] == "Lena Fischer" and got["externalId"] == LENA_OID
    assert [u["id"] for u in scim.find("Users", f'externalId eq "{LENA_OID}"')] == [lena["id"]]
    assert [g["id"] for g in scim.find("Groups", 'displayName eq "sales team"')] == [group["id"]]
    assert scim.get(f"/Groups/{group['id']}").json["displayName"] == "Sales team"
    with third.app_context():
        db.engine.dispose()


def test_an_emulator_cycle_provisions_through_the_real_endpoint(app, scim, emulator, active):
    """Entra's request sequence (look up, create, patch, groups and members, disable) against /scim/v2/."""
    # In-process calls carry no client address; demo mode serves loopback clients only.
    loopback = lambda environ, start: app(dict(environ, REMOTE_ADDR="127.0.0.1"), start)  # noqa: E731
    emulator.provisioning_session.mount("https://portal.test/", WSGIAdapter(loopback))
    emulator.configure_provisioning(NORTHWIND_TID, tenant_url="https://portal.test/scim/v2", token=scim.token)
    emulator.set_tenant(NORTHWIND_TID, assigned=[SALES, OMAR_OID])
    summary = emulator.provision(NORTHWIND_TID)
    assert summary["errors"] == [] and summary["users"]["created"] == 2 and summary["groups"]["created"] == 1
    lena = scim.find("Users", f'userName eq "{LENA}"')[0]
    assert lena["externalId"] == LENA_OID and lena["active"] is True and lena["title"]
    [group] = scim.find("Groups", 'displayName eq "Sales team"')
    assert [m["value"] for m in group["members"]] == [lena["id"]]
    again = emulator.provision(NORTHWIND_TID)
    assert again["errors"] == [] and again["users"]["unchanged"] == 2
    emulator.set_user_state(LENA_OID, "disabled")
    summary = emulator.provision(NORTHWIND_TID)
    assert summary["errors"] == [] and summary["users"]["disabled"] == 1
    assert scim.get(f"/Users/{lena['id']}").json["active"] is False
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(ScimGroup)) == 1
        events = db.session.execute(db.select(AuditEvent).where(AuditEvent.by_provisioning.is_(True))).scalars()
        assert {"scim_user_created", "scim_group_created", "scim_group_updated", "user_blocked"} <= {
            e.action for e in events}


def test_production_configuration_over_https_behind_the_proxy(tmp_path, database_uri):
    """As deployed: DEMO_MODE off, https behind one proxy (X-Forwarded-Proto), no cookie on SCIM answers."""
    from domain import directory
    config = dict(PRODUCTION, PROXY_FIX_X_FOR=1, PROXY_FIX_X_PROTO=1,
                  **({"SQLALCHEMY_DATABASE_URI": database_uri} if database_uri else {}))
    instance = str(tmp_path / "prod")
    setup = create_app(config, instance_path=instance)
    assert setup.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
    with setup.app_context():
        db.engine.dispose()
    prod = create_app(config, instance_path=instance)
    with prod.app_context():
        org = directory.create_organization("Northwind Traders", ["northwind.example"])
        org.sso_active, org.tenant_id = True, NORTHWIND_TID
        db.session.commit()
        token = provisioning.generate_token(org, OPERATOR)
    client = prod.test_client()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json",
               "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    resp = client.post("/scim/v2/Users", data=json.dumps(user_body(LENA, LENA_OID)), headers=headers,
                       base_url="http://portal.example.com")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.json["meta"]["location"].startswith("https://portal.example.com/scim/v2/Users/")
    assert "Set-Cookie" not in resp.headers and resp.headers["Strict-Transport-Security"]
    got = client.get(f"/scim/v2/Users/{resp.json['id']}", headers=headers, base_url="http://portal.example.com")
    assert got.status_code == 200 and "Set-Cookie" not in got.headers
    with prod.app_context():
        assert db.session.execute(db.select(AuditEvent.ip).where(AuditEvent.action == "scim_user_created")
                                  ).scalar_one() == "203.0.113.7"
        db.engine.dispose()
