"""Every collaborator interface is provided in full by its real class and by its one fake."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from amphora.config import load_config
from amphora.interfaces import IKeepalivedState, IListenerRegistry, INetworkPlugger
from amphora.keepalived import Keepalived
from amphora.listeners.manager import ListenerManager
from amphora.network import NetworkPlugger
from amphora.testing import FakeKeepalived, FakeListeners, FakeNetwork
from tests.helpers import write_config


@pytest.fixture
def config(pki, tmp_path):
    return load_config(write_config(pki, str(tmp_path)))


@pytest.mark.parametrize("interface,fake", [
    (IListenerRegistry, lambda: FakeListeners()),
    (IKeepalivedState, lambda: FakeKeepalived(Clock())),
    (INetworkPlugger, lambda: FakeNetwork()),
])
def test_the_fake_provides_its_interface(interface, fake):
    assert verifyObject(interface, fake())


def test_the_listener_manager_provides_the_registry(config):
    assert verifyObject(IListenerRegistry, ListenerManager(config, MemoryReactorClock()))


def test_keepalived_provides_its_state(config):
    assert verifyObject(IKeepalivedState, Keepalived(config, MemoryReactorClock(), FakeNetwork()))


def test_the_network_plugger_provides_its_interface(tmp_path):
    config = SimpleNamespace(network=SimpleNamespace(namespace=""), agent=SimpleNamespace(state_dir=str(tmp_path)))
    plugger = NetworkPlugger(config, MemoryReactorClock(), SimpleNamespace(keepalived_owns_vips=False), netlink=object(),
                             run_blocking=lambda fn, *a: None)
    assert verifyObject(INetworkPlugger, plugger)
