"""amphora.pyroute2lean: pyroute2's parts without its ~190-module __init__; and what the agent never imports.

Each check runs in a fresh interpreter: what is in ``sys.modules`` is the point.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_part_imports_only_what_it_needs():
    run("""
        import sys
        from amphora.pyroute2lean import part
        IPRoute = part("iproute.linux").IPRoute
        diag = part("netlink.diag")
        assert part("netlink.exceptions").NetlinkError
        assert callable(part("netns").listnetns)
        for absent in ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.conntrack", "pyroute2.nslink", "sqlite3"):
            assert absent not in sys.modules, absent
        with IPRoute() as ipr:
            assert ipr.get_links()
    """)


def test_the_package_still_gives_every_name_afterwards():
    run("""
        from amphora.pyroute2lean import part
        lean = part("iproute.linux").IPRoute
        from pyroute2 import NDB, IPRoute, NetlinkError, netns
        import pyroute2
        assert IPRoute is lean
        assert NetlinkError is part("netlink.exceptions").NetlinkError
        assert netns is part("netns") and NDB is pyroute2.ndb.main.NDB
        try:
            pyroute2.NoSuchName
        except AttributeError:
            pass
        else:
            raise AssertionError("a missing name must raise AttributeError")
    """)


def test_a_package_imported_in_full_first_is_used_as_is():
    run("""
        import pyroute2
        from amphora.pyroute2lean import part
        assert part("iproute.linux").IPRoute is pyroute2.IPRoute
        assert not hasattr(pyroute2, "__getattr__")
    """)


def test_the_agent_imports_no_test_tools_nor_documentation_parsers():
    run("""
        import sys
        import amphora.agent, amphora.tap
        heavy = ("pyroute2", "hypothesis", "jsonschema", "yaml", "openapi_spec_validator", "pytest", "sqlite3",
                 "amphora.testing", "amphora.devpki", "amphora.ctl")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy)
        assert not loaded, loaded
    """)
