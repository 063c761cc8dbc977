"""Run a program inside a named network namespace, without ``ip netns exec``.

``exec_argv(namespace, argv)`` returns the argv to spawn: empty namespace ->
``argv`` unchanged; otherwise ``python -m amphora.netns NAMESPACE -- argv...``,
which enters ``/var/run/netns/NAMESPACE`` with setns(2) and execs the program
(same pid from then on, so pid files and signals reach the real program).
"""

from __future__ import annotations

import ctypes
import os
import sys

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread; os.setns only exists from Python 3.12 on."""
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def exec_argv(namespace: str, argv: list[str]) -> list[str]:
    if not namespace:
        return list(argv)
    return [sys.executable, "-m", "amphora.netns", namespace, "--", *argv]


def enter(namespace: str) -> None:
    """Move the calling thread (process, if single-threaded) into ``namespace``."""
    fd = os.open(os.path.join(NETNS_RUN_DIR, namespace), os.O_RDONLY)
    try:
        setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: python -m amphora.netns NAMESPACE -- PROGRAM [ARGS...]\n")
        raise SystemExit(2)
    namespace, argv = args[0], args[2:]
    try:
        enter(namespace)
    except OSError as e:
        sys.stderr.write(f"amphora.netns: cannot enter network namespace {namespace!r}: {e.strerror}\n")
        raise SystemExit(1)
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        sys.stderr.write(f"amphora.netns: cannot run {argv[0]}: {e.strerror}\n")
        raise SystemExit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
