"""The operator's CLI, including its refusals: one line, exit code 1, nothing written."""
from __future__ import annotations

from domain import directory
from helpers import PASSWORD
from models import Domain, Organization, User, db


def _counts(app):
    with app.app_context():
        return tuple(db.session.scalar(db.select(db.func.count()).select_from(m)) for m in (Organization, Domain, User))


def test_init_db_is_repeatable(runner):
    assert runner.invoke(args=["init-db"]).exit_code == 0
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0 and "Database ready" in result.output


def test_create_org_with_domains(app, runner):
    result = runner.invoke(args=["create-org", "Tailspin Toys", "--domain", "Tailspin.Example.", "--domain", "bücher.example"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        org = directory.get_organization("Tailspin Toys")
        assert [d.name for d in org.domains] == ["tailspin.example", "xn--bcher-kva.example"]


def test_create_org_refusals_write_nothing(app, runner):
    assert runner.invoke(args=["create-org", "Tailspin", "--domain", "tailspin.example"]).exit_code == 0
    before = _counts(app)
    for args in (["create-org", "Tailspin", "--domain", "other.example"],  # duplicate name
                 ["create-org", "Other", "--domain", "TAILSPIN.example"],  # duplicate domain
                 ["create-org", "Other", "--domain", "not a domain"],
                 ["create-org", "Other", "--domain", "nodot"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1, args
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert _counts(app) == before


def test_create_admin_reads_password_from_stdin_and_can_sign_in(app, runner, client):
    runner.invoke(args=["create-org", "Tailspin", "--domain", "tailspin.example"])
    result = runner.invoke(args=["create-admin", "Ada@Tailspin.example", "--org", "Tailspin", "--password-stdin"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    from helpers import password_sign_in
    resp = password_sign_in(client, "ada@tailspin.example")
    assert resp.status_code == 303
    assert client.get("/settings/security").status_code == 200


def test_create_admin_prompts_for_password(app, runner):
    runner.invoke(args=["create-org", "Tailspin", "--domain", "tailspin.example"])
    result = runner.invoke(args=["create-admin", "ada@tailspin.example", "--org", "Tailspin"],
                           input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output


def test_create_admin_refusals_write_nothing(app, runner):
    runner.invoke(args=["create-org", "Tailspin", "--domain", "tailspin.example"])
    runner.invoke(args=["create-admin", "ada@tailspin.example", "--org", "Tailspin", "--password-stdin"], input=PASSWORD)
    before = _counts(app)
    cases = [
        (["create-admin", "bob@tailspin.example", "--org", "Nobody"], PASSWORD),  # unknown org
        (["create-admin", "ADA@tailspin.example", "--org", "Tailspin"], PASSWORD),  # duplicate
        (["create-admin", "a@b@tailspin.example", "--org", "Tailspin"], PASSWORD),  # malformed
        (["create-admin", "bob@elsewhere.example", "--org", "Tailspin"], PASSWORD),  # other domain
        (["create-admin", "bob@tailspin.example", "--org", "Tailspin"], "short"),  # weak password
    ]
    for args, password in cases:
        result = runner.invoke(args=args + ["--password-stdin"], input=password + "\n")
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert _counts(app) == before


def test_generate_key_prints_a_usable_key(runner):
    import vault
    key = runner.invoke(args=["generate-key"]).output.strip()
    assert len(vault.parse_keys(key)) == 1


def test_demo_seed_without_serving(app, runner):
    result = runner.invoke(args=["demo", "--no-serve"])
    assert result.exit_code == 0, result.output
    assert "admin@northwind.example" in result.output
    assert runner.invoke(args=["demo", "--no-serve"]).exit_code == 0  # idempotent
    with app.app_context():
        assert directory.get_organization("Northwind Traders").domains[0].name == "northwind.example"
