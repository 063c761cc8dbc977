"""Acceptance: Octavia 19.0.0's own controller code (API 1.0) against a real agent
over mutual TLS on loopback. The agent's certificate carries the amphora id as CN
and DNS name, as Octavia's client checks."""

from __future__ import annotations

import uuid

import pytest_twisted

from tests.octavia.support import assert_passed, by_call, controller_params, run_driver, summary

VERSION = "19.0.0"


@pytest_twisted.ensureDeferred
async def test_discovery_info_and_details_through_the_driver(agent, pki, tmp_path):
    results = await run_driver(controller_params(pki, agent, str(tmp_path / "ctl"), VERSION, "host_1_0"))
    print(summary(VERSION, results))
    assert_passed(results, ["check (GET //)", "api_version", "get_info", "haproxy_versions", "get_details"])
    major, minor = by_call(results)["haproxy_versions"]["result"]
    assert int(major) >= 2 and int(minor) >= 0
    details = by_call(results)["get_details"]["result"]
    # What the controller reads: memory in kB (tune.ssl.cachesize) and the tuned profiles.
    assert details["memory"]["total"] > 0 and details["memory"]["free"] > 0
    assert isinstance(details["active_tuned_profiles"], str)


@pytest_twisted.ensureDeferred
async def test_route_list_of_the_1_0_client(agent, pki, tmp_path, octavia_cleanup):
    params = controller_params(pki, agent, str(tmp_path / "ctl"), VERSION, "routes_1_0",
                               lb_id=str(uuid.uuid4()), unknown_id=str(uuid.uuid4()))
    results = await run_driver(params)
    print(summary(VERSION, results))
    assert_passed(results, ["get_api_version", "get_info", "get_details", "get_all_listeners",
                            "delete_listener(unknown)", "upload_config", "reload_listener", "start_listener",
                            "delete_listener", "get_cert_md5sum(absent, 404 ignored)", "upload_cert_pem", "get_cert_md5sum",
                            "delete_cert_pem"])
    # No such route in API 1.0: Octavia's agent answers 405 too (InvalidRequest to the client).
    assert "InvalidRequest" in by_call(results)["get_listener_status"]["error"]
