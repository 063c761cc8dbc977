#!/usr/bin/env python3
"""Hitless reloads: HTTP load through one listener while the agent reloads it N times.

Starts the real agent (``twistd -n amphora-agent``), one listener in front of
a loopback backend, then client processes send requests as fast as they can
(a new TCP connection for every request: the hardest case for a reload, since
every accept crosses the old/new worker hand-over) while the controller side
uploads a changed configuration and reloads it ``--reloads`` times. Prints
requests sent, failed (refused, reset, timed out, or non-200) and reloads.
The goal is zero failed.

``--down-member`` adds a second member that is down (nothing listens; slow
checks, ``inter 3s``), so a new worker that forgot its state would send it
requests; ``--load-state`` adds ``load-server-state-from-file global`` to the
configuration's defaults (else the agent adds it to each backend of the
running copy: ``amphora/listeners/serverstate.py``).

    python bench/hitless.py [--reloads 50] [--clients 2] [--down-member [--load-state]]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.helpers import TwistdAgent, free_port, make_pki, write_config  # noqa: E402
from tests.listener_support import (Backend, BlockingAPI, http_config, kill_listeners, new_id,  # noqa: E402
                                    short_dir)


def client(port: int, stop, counts) -> None:
    sent = failed = 0
    errors: dict[str, int] = {}
    while not stop.is_set():
        sent += 1
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status != 200:
                failed += 1
                errors[str(response.status)] = errors.get(str(response.status), 0) + 1
        except Exception as e:  # refused, reset, timeout: all count
            failed += 1
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    counts.put((sent, failed, errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=50)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--down-member", action="store_true", help="add a member that is down")
    parser.add_argument("--load-state", action="store_true",
                        help="with --down-member: the configuration says load-server-state-from-file global")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="amp3-bench-")
    run_dir = short_dir("amp3")
    pki = make_pki(os.path.join(work, "pki"))
    port = free_port()
    config = write_config(pki, os.path.join(work, "agent"), port, {"agent": {"run_dir": run_dir}})
    agent = TwistdAgent(config, os.path.join(work, "agent.log")).start()
    backend = Backend("A").start()
    try:
        agent.wait_listening(port)
        api = BlockingAPI(pki.paths, port)
        lid, lport, pool, member = new_id(), free_port(), new_id(), new_id()
        members = [(member, backend.port)] + ([(new_id(), free_port())] if args.down_member else [])

        def config(extra_global=""):
            text = http_config(lid, lport, pool, members, check=args.down_member, extra_global=extra_global)
            text = text.replace(" check inter 200 fall 1 rise 1", " check inter 3s fall 1 rise 1")
            if args.load_state:
                text = text.replace("defaults\n    mode http\n",
                                    "defaults\n    mode http\n    load-server-state-from-file global\n")
            return text
        assert api.call("PUT", f"/listeners/{lid}/haproxy", config())[0] == 201
        code, body = api.call("PUT", f"/listeners/{lid}/start")
        assert code == 202, body
        if args.down_member:
            time.sleep(3.5)  # the down member's first check

        stop = multiprocessing.Event()
        counts = multiprocessing.Queue()
        workers = [multiprocessing.Process(target=client, args=(lport, stop, counts)) for _ in range(args.clients)]
        for w in workers:
            w.start()
        time.sleep(0.3)
        started = time.monotonic()
        reload_failures = 0
        for i in range(args.reloads):
            text = config(extra_global=f"    # generation {i}\n    maxconn {1000 + i}")
            assert api.call("PUT", f"/listeners/{lid}/haproxy", text)[0] == 201
            code, body = api.call("PUT", f"/listeners/{lid}/reload")
            if code != 202:
                reload_failures += 1
                print("reload failed:", code, body, file=sys.stderr)
        elapsed = time.monotonic() - started
        time.sleep(0.3)
        stop.set()
        sent = failed = 0
        errors: dict[str, int] = {}
        for _ in workers:
            s, f, e = counts.get(timeout=30)
            sent, failed = sent + s, failed + f
            for k, v in e.items():
                errors[k] = errors.get(k, 0) + v
        for w in workers:
            w.join()
        api.call("PUT", f"/listeners/{lid}/stop")
        api.close()
        if args.down_member:
            print(f"one member down; configuration {'loads' if args.load_state else 'does not load'} "
                  f"the server-state file")
        print(f"reloads: {args.reloads} in {elapsed:.1f}s ({elapsed / args.reloads * 1000:.0f} ms per "
              f"upload+reload), failed reloads: {reload_failures}")
        print(f"requests sent: {sent}  failed: {failed}  ({sent / (elapsed + 0.6):.0f} req/s, "
              f"{args.clients} clients, new connection per request)")
        if errors:
            print(f"failures by kind: {errors}")
    finally:
        agent.stop()
        kill_listeners(run_dir)
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
