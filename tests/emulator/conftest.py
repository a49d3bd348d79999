"""Fixtures of the emulator's tests: an emulator per test (seeded with one key), its back channel and a browser."""
import pytest
import requests
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from emulator import Emulator
from emulator_flows import BROWSER, CLIENTS, make_emulator


@pytest.fixture(scope="session")
def seed(tmp_path_factory):
    """One emulator's state (its RSA key) copied into each test: keeps the suite fast."""
    path = tmp_path_factory.mktemp("seed")
    emu = Emulator(str(path), browser_url=BROWSER, clients=CLIENTS)
    return emu.store.path


@pytest.fixture
def emu(tmp_path, seed):
    return make_emulator(tmp_path / "instance", seed)


@pytest.fixture
def http(emu):
    return emu.mount(requests.Session())


@pytest.fixture
def browser(emu):
    # Mounted under /_entra like the portal does, so cookie paths behave as in real use.
    return Client(DispatcherMiddleware(NotFound(), {"/_entra": emu.wsgi}))
