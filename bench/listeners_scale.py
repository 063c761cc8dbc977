#!/usr/bin/env python3
"""Status routes at scale: 1, 50 and 200 running listeners on one agent.

For each size, a fresh agent (``twistd -n amphora-agent``) gets that many
listeners uploaded and started (each a real haproxy), then one keep-alive
mTLS client times ``GET /v0.1/listeners`` and ``GET /v0.1/listeners/<uuid>``
(a live ``show stat`` on that listener's socket), with ``GET /info`` in the
same run as the baseline of a cheap request. Prints median and p90 latency,
the ratio to /info, and the agent's RSS.

    python bench/listeners_scale.py [--sizes 1,50,200] [--requests 100]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.helpers import TwistdAgent, free_port, make_pki, write_config  # noqa: E402
from tests.listener_support import (Backend, BlockingAPI, http_config, kill_listeners, new_id,  # noqa: E402
                                    short_dir)


def timed(api: BlockingAPI, path: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        code, _ = api.call("GET", path)
        times.append(time.perf_counter() - t0)
        assert code == 200, (path, code)
    return times


def info_times(api: BlockingAPI, n: int) -> list[float]:
    """GET /info (outside /v0.1) on the same keep-alive connection."""
    api.call("GET", "/listeners")  # opens the connection
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        api.conn.request("GET", "/info")
        response = api.conn.getresponse()
        response.read()
        times.append(time.perf_counter() - t0)
    return times


def ms(values, q=None):
    values = sorted(values)
    if q is None:
        return statistics.median(values) * 1000
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def run_size(size: int, requests: int, pki, backend) -> dict:
    work = tempfile.mkdtemp(prefix="amp3-bench-")
    run_dir = short_dir("amp3")
    port = free_port()
    config = write_config(pki, os.path.join(work, "agent"), port, {"agent": {"run_dir": run_dir}})
    agent = TwistdAgent(config, os.path.join(work, "agent.log")).start()
    try:
        agent.wait_listening(port)
        ids = [new_id() for _ in range(size)]

        def create(lid):
            api = BlockingAPI(pki.paths, port)
            try:
                text = http_config(lid, free_port(), new_id(), [(new_id(), backend.port)])
                assert api.call("PUT", f"/listeners/{lid}/haproxy", text)[0] == 201
                code, body = api.call("PUT", f"/listeners/{lid}/start")
                assert code == 202, body
            finally:
                api.close()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, ids))
        setup = time.perf_counter() - t0
        api = BlockingAPI(pki.paths, port)
        listing = api.call("GET", "/listeners")[1]
        assert len(listing) == size and all(d["status"] == "ACTIVE" for d in listing), listing[:3]
        info = info_times(api, requests)
        all_times = timed(api, "/listeners", requests)
        one_times = []
        for _ in range(requests):
            lid = random.choice(ids)
            t1 = time.perf_counter()
            code, body = api.call("GET", f"/listeners/{lid}")
            one_times.append(time.perf_counter() - t1)
            assert code == 200 and body["pools"], body
        rss = psutil.Process(agent.proc.pid).memory_info().rss / 2**20
        api.close()
        return {"size": size, "setup": setup, "info": info, "all": all_times, "one": one_times, "rss": rss}
    finally:
        agent.stop()
        kill_listeners(run_dir)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,50,200")
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    pki_dir = tempfile.mkdtemp(prefix="amp3-bench-pki-")
    pki = make_pki(pki_dir)
    backend = Backend("A").start()
    try:
        print(f"{'listeners':>9} {'setup s':>8} {'/info ms':>9} {'GET /listeners ms (p50/p90, x info)':>36} "
              f"{'GET /listeners/<id> ms (p50/p90, x info)':>42} {'agent RSS MiB':>14}")
        for size in (int(s) for s in args.sizes.split(",")):
            r = run_size(size, args.requests, pki, backend)
            base = ms(r["info"])
            print(f"{size:>9} {r['setup']:>8.1f} {base:>9.2f} "
                  f"{ms(r['all']):>17.2f} / {ms(r['all'], .9):>6.2f}  x{ms(r['all']) / base:>5.2f}   "
                  f"{ms(r['one']):>21.2f} / {ms(r['one'], .9):>6.2f}  x{ms(r['one']) / base:>5.2f}   "
                  f"{r['rss']:>12.1f}", flush=True)
    finally:
        backend.stop()
        shutil.rmtree(pki_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
