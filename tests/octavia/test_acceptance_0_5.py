"""Acceptance: the API 0.5 clients of Octavia 4.0.0 (controllers up to 11.x) and
0.5.2 (2015) against a real agent at /0.5: every call of their route lists, with
a real haproxy listener (per-listener haproxy, like v0.1)."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests import certificates_support as cs
from tests.helpers import free_port
from tests.listener_support import Backend, http_config, new_id
from tests.octavia.support import assert_passed, controller_params, run_driver, summary

# The calls both releases make that the 0.5 face serves (the v0.1 routes plus the
# amphora-named upload and /0.5/info).
SERVED = ["get_info", "get_details", "get_all_listeners", "upload_config", "start_listener",
          "get_listener_status", "reload_listener", "stop_listener", "upload_cert_pem", "get_cert_md5sum",
          "delete_cert_pem", "delete_listener"]


@pytest.mark.parametrize("version", ["4.0.0", "0.5.2"])
@pytest_twisted.ensureDeferred
async def test_route_list_at_0_5(agent, pki, tmp_path, version, octavia_cleanup):
    lid, pool, member = new_id(), new_id(), new_id()
    bundle = cs.bundle("www.example.com")
    with Backend("member") as backend:
        config = http_config(lid, free_port(), pool, [(member, backend.port)])
        params = controller_params(
            pki, agent, str(tmp_path / "ctl"), version, "routes_0_5", listener_id=lid, config=config,
            pem=(bundle.cert + bundle.key + b"".join(bundle.chain)).decode(),
            vip="203.0.113.10", mac="fa:16:3e:00:00:01", member_mac="fa:16:3e:00:00:02")
        results = await run_driver(params)
    print(summary(version, results))
    assert_passed(results, SERVED)
