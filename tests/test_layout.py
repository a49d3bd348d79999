"""The house's layout holds: imports run one way (README, Design), and the emulator stays apart from the portal.

Read from the source with `ast`, so a function-level import counts like any other.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import PRODUCTION

ROOT = Path(__file__).resolve().parent.parent
# Inside domain/, each module imports only those before it (README, Design).
DOMAIN_ORDER = re.search(r"in this order: (.*?)\. No domain module", (ROOT / "README.md").read_text(),
                         re.S).group(1).replace("\n", " ")
DOMAIN_ORDER = [name.strip() for name in DOMAIN_ORDER.split(",")]
PORTAL = {"app", "blueprints", "commands", "demo", "extensions", "configuration", "domain", "entra", "vault",
          "throttles", "models"}
# What each part of the portal must not import (the layers above it, and the emulator).
FORBIDDEN = {
    "models": PORTAL - {"models"} | {"emulator"},
    "vault": PORTAL - {"vault"} | {"emulator"},
    "throttles": PORTAL - {"throttles", "models"} | {"emulator"},
    "entra": PORTAL - {"entra", "vault"} | {"emulator"},
    "domain": {"app", "blueprints", "commands", "demo", "extensions", "configuration", "emulator"},
    "extensions": {"app", "blueprints", "commands", "demo", "emulator"},
    "configuration": PORTAL - {"configuration", "vault", "throttles"} | {"emulator"},
    "blueprints": {"app", "commands", "demo", "emulator"},
    "commands": {"app", "blueprints", "emulator"},
    "app": {"emulator"},  # only demo.py wires the emulator in
    "demo": {"app", "blueprints", "commands"},
    "emulator": PORTAL,
}
# Request state a domain service never reads (it gets what it needs as arguments).
REQUEST_STATE = {("flask", "request"), ("flask", "session"), ("flask", "g"), ("flask_login", None),
                 ("flask_wtf", None)}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in PORTAL | {"emulator"} or (len(parts) == 1 and parts[0] in PORTAL):
            found[".".join(p for p in parts if p != "__init__")] = path
    return found


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, name imported from it or None, line) for every import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.module, alias.name, node.lineno) for alias in node.names]
    return out


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    """The portal's own modules a file imports (`from domain import sealed` counts as domain.sealed)."""
    out = []
    for module, name, line in _imports(path):
        if module.split(".")[0] not in PORTAL | {"emulator"}:
            continue
        out.append((f"{module}.{name}" if name and module in {"domain", "blueprints", "commands", "entra"}
                    and (ROOT / module / f"{name}.py").exists() else module, line))
    return out


def test_imports_run_one_way():
    modules = _modules()
    assert {"app", "domain.members", "blueprints.scim", "emulator.provisioning"} <= set(modules)
    wrong = []
    for name, path in sorted(modules.items()):
        top = name.split(".")[0]
        for target, line in _imported_modules(path):
            if target.split(".")[0] in FORBIDDEN[top]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert wrong == []


def test_domain_modules_import_only_those_before_them():
    on_disk = {p.stem for p in (ROOT / "domain").glob("*.py")} - {"__init__"}
    assert set(DOMAIN_ORDER) == on_disk, "README's domain order must name every module of domain/"
    wrong = []
    for position, module in enumerate(DOMAIN_ORDER):
        path = ROOT / "domain" / f"{module}.py"
        for target, line in _imported_modules(path):
            parts = target.split(".")
            if parts[0] == "domain" and len(parts) > 1 and DOMAIN_ORDER.index(parts[1]) >= position:
                wrong.append(f"domain/{module}.py:{line} imports {target}, which comes after it")
    assert wrong == []


def test_the_domain_reads_no_request_state():
    wrong = []
    for path in sorted((ROOT / "domain").glob("*.py")):
        for module, name, line in _imports(path):
            top = module.split(".")[0]
            if (top, name) in REQUEST_STATE or (top, None) in REQUEST_STATE:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}{'.' + name if name else ''}")
    assert wrong == []


def test_a_web_worker_imports_no_library_it_needs_only_later(tmp_path):
    """A gunicorn worker building the app leaves out what only some requests or commands need, megabytes in every
    worker: SCIM's models (the first call from Entra), the password checker (a password set), the migrations (`flask
    db`, a demo start)."""
    script = ("import json, sys, app; app.create_app(json.loads(sys.argv[1]), instance_path=sys.argv[2]); "
              "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(PRODUCTION), str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert {"scim2_models", "pydantic", "lark", "zxcvbn", "alembic", "flask_migrate"} & set(json.loads(out)) == set()
