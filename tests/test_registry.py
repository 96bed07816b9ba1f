"""The plugin registry: entry points are the one list of built-in plugins."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import latis_core
from latis_core._plugins import registry
from latis_core._plugins.transport import Dialer, Listener

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
GROUPS = ("latis.agents", "latis.transports", "latis.provisioners")


def declared(group: str) -> dict[str, str]:
    """The entry points pyproject.toml declares in `group`."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return dict(project.get("entry-points", {}).get(group, {}))


@pytest.mark.parametrize("group", GROUPS)
def test_installed_entry_points_are_pyprojects(group: str) -> None:
    """The registry finds exactly the built-ins pyproject.toml declares (reinstall if not)."""
    own = {name: ep.value for name, ep in registry._own(group).items()}
    assert own == declared(group), "the installed metadata is stale: pip install -e ."


def test_every_builtin_agent_loads_as_an_agent() -> None:
    """Each built-in agent entry point is an Agent class built from text options."""
    for name in declared("latis.agents"):
        cls = registry.load_agent(name)
        assert issubclass(cls, latis_core.Agent), name
        assert callable(cls.from_options), name


def test_every_builtin_transport_has_the_interface() -> None:
    """Each built-in transport module exposes a DIALER and/or LISTENER with from_url."""
    for name in declared("latis.transports"):
        module = registry.load_transport(name)
        dialer = getattr(module, "DIALER", None)
        listener = getattr(module, "LISTENER", None)
        assert dialer is not None or listener is not None, name
        for cls, protocol in ((dialer, Dialer), (listener, Listener)):
            if cls is None:
                continue
            for method in ("from_url", "describe", "connect" if protocol is Dialer else "listen"):
                assert callable(getattr(cls, method, None)), f"{name}: {cls.__name__}.{method}"


def test_every_builtin_provisioner_has_the_interface() -> None:
    """Each built-in provisioner is a class with Options and every lifecycle method."""
    for name in declared("latis.provisioners"):
        cls = registry.load_provisioner(name)
        assert isinstance(getattr(cls, "Options", None), type), name
        for method in ("create", "start", "stop", "destroy", "status", "dialer"):
            assert callable(getattr(cls, method, None)), f"{name}: {method}"


def test_every_address_scheme_names_a_registered_transport() -> None:
    """Each URL scheme latis reads maps to a transport that is registered."""
    assert set(registry.SCHEMES.values()) <= set(registry.transport_names())


def test_an_unknown_plugin_names_the_known_ones() -> None:
    """Asking for a plugin that does not exist lists those that do."""
    with pytest.raises(LookupError, match=r"unknown agent 'nope' \(known: .*echo"):
        registry.load_agent("nope")


def test_an_address_error_names_what_can_be_done_and_the_address() -> None:
    """To listen, only the schemes that listen are offered; urllib's own complaint
    ("Invalid IPv6 URL") comes with the address it is about."""
    with pytest.raises(ValueError) as listen:
        registry.listener_from_url("foo://x")
    assert str(listen.value).endswith("expected one of unix:, tcp://, ws://, wss://, quic://")
    with pytest.raises(ValueError) as dial:
        registry.dialer_from_url("foo://x")
    assert "local:" in str(dial.value) and "ssh://" in str(dial.value)
    with pytest.raises(ValueError, match=r"^'tcp://\[::1': Invalid IPv6 URL"):
        registry.dialer_from_url("tcp://[::1")


def test_latis_unit_max_sessions_must_be_one_or_more() -> None:
    import subprocess
    import sys

    for bad in ("0", "x"):
        done = subprocess.run(
            [sys.executable, "-m", "latis_core._unit.cli", "--stdio", "--max-sessions", bad],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 2
        assert f"--max-sessions: expected a whole number of at least 1, got {bad}" in done.stderr
