"""How much one netlink operation in another namespace costs: amphora.network's
thread+setns socket vs pyroute2's own IPRoute(netns=...) (which forks a helper).

Root needed; creates and removes one namespace of its own. Prints figures:

    .venv/bin/python bench/netns_netlink.py [iterations]
"""

from __future__ import annotations

import ctypes
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyroute2 import IPRoute, netns  # noqa: E402

from amphora.network import iproute  # noqa: E402


def timed(fn, n):
    fn()  # warm up
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    name = f"amp7b{secrets.token_hex(3)}"
    libc = ctypes.CDLL(None, use_errno=True)
    netns.create(name, libc=libc)
    try:
        def ours():
            with iproute(name) as ipr:
                ipr.get_links()

        def theirs():
            with IPRoute(netns=name, libc=libc) as ipr:
                ipr.get_links()

        def own_namespace():
            with iproute("") as ipr:
                ipr.get_links()

        baseline = timed(theirs, n)
        mine = timed(ours, n)
        local = timed(own_namespace, n)
        print(f"open + dump links + close, {n} iterations each")
        print(f"  pyroute2 IPRoute(netns=...) (fork helper): {baseline * 1e3:7.3f} ms")
        print(f"  amphora iproute(ns) (thread + setns):      {mine * 1e3:7.3f} ms")
        print(f"  amphora iproute('') (own namespace):       {local * 1e3:7.3f} ms")
        print(f"  ratio fork/thread: {baseline / mine:.1f}x")
    finally:
        netns.remove(name, libc=libc)


if __name__ == "__main__":
    main()
