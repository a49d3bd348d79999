"""First start: two gunicorn instances of two workers each, in demo mode, on one empty database at once: all boot."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import requests

from helpers import ROOT, TEST_KEY, free_port, readme_gunicorn

# Each worker says when it has built the app (and so run the start-up migrations).
READY_HOOK = "def post_worker_init(worker):\n    print('worker ready', worker.pid, flush=True)\n"


def test_two_instances_of_two_workers_start_together_on_an_empty_database(tmp_path, database_uri):
    # Without the start-up lock this failed every time on this 2-core machine (SQLite: "table ... already exists";
    # PostgreSQL: UniqueViolation), so one attempt per database is enough.
    instance = str(tmp_path / "instance")  # shared, as two instances on one host would share it
    hook = tmp_path / "ready.py"
    hook.write_text(READY_HOOK)
    env = dict(os.environ, FLASK_DEMO_MODE="1", FLASK_SECRET_KEY="s" * 48,
               FLASK_ENCRYPTION_KEYS=json.dumps([TEST_KEY]))
    if database_uri:
        env["FLASK_SQLALCHEMY_DATABASE_URI"] = database_uri
    ports, procs, logs = [free_port(), free_port()], [], []
    try:
        for port in ports:
            log = open(tmp_path / f"gunicorn-{port}.log", "w+")
            logs.append(log)
            command = readme_gunicorn(port, instance_path=instance, workers=2) + ["-c", str(hook)]
            procs.append(subprocess.Popen(command, cwd=ROOT, env=dict(env, FLASK_SERVER_NAME=f"127.0.0.1:{port}"),
                                          stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            outputs = [open(log.name).read() for log in logs]
            if all(out.count("worker ready") == 2 for out in outputs):
                break
            assert all(proc.poll() is None for proc in procs), "an instance exited:\n" + "\n".join(outputs)
            time.sleep(0.2)
        else:
            pytest.fail("not every worker booted:\n" + "\n".join(outputs))
        for port in ports:
            for _ in range(4):  # several requests, so both workers are likely asked
                assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            assert requests.get(f"http://127.0.0.1:{port}/login", timeout=10).status_code == 200
        outputs = [open(log.name).read() for log in logs]
        assert all(proc.poll() is None for proc in procs)
        assert not any("Traceback" in out or "Worker failed" in out for out in outputs), "\n".join(outputs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        for log in logs:
            log.close()
