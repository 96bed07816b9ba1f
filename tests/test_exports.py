"""The public API: what each package exports, and under which name."""

from __future__ import annotations

import types

import latis_transports
import pytest

import latis_core
import latis_core.blocking


@pytest.mark.parametrize("module", [latis_core, latis_core.blocking, latis_transports])
def test_all_lists_every_public_name(module: types.ModuleType) -> None:
    """`__all__` names what exists, and every public name the package defines."""
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    defined_here = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith(module.__name__)
        and not isinstance(value, types.ModuleType)
    }
    assert defined_here <= set(module.__all__)


def test_lazy_names_are_listed() -> None:
    """Every name latis_core imports on first use is in its `__all__`, and the reverse."""
    assert set(latis_core._WHERE) | {"__version__"} == set(latis_core.__all__) | {"__version__"}


def test_exports_claim_the_package() -> None:
    """Classes and functions exported by latis_core say latis_core is their module."""
    for name in latis_core.__all__:
        value = getattr(latis_core, name)
        if isinstance(value, type | types.FunctionType) and not hasattr(value, "__attrs_attrs__"):
            assert value.__module__ == "latis_core", name


def test_sans_io_core_does_not_import_trio() -> None:
    """Frames, messages, codec and connection work without trio (no I/O in them)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import latis_core._wire.connection, latis_core._wire.codec, latis_core._wire.frames\n"
        "assert 'trio' not in sys.modules, 'trio was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
