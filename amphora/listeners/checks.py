"""Checks before a start, reload or upload: ``haproxy -c`` (cached by content) and the bind test.

Functions of a ``HaproxyInstance`` (its ``check`` and ``_check_binds`` delegate here).
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from amphora.errors import OperationFailed
from amphora.listeners.haproxy import bind_addresses
from amphora.process import CommandTimeout

log = Logger()


@inlineCallbacks
def check(inst, config_path: str, failure_message: str, error=OperationFailed, reuse: bool = False):
    """``haproxy -c`` on ``config_path`` plus the agent's fragment; returns haproxy's words.

    With ``reuse``, a check that already passed for exactly these bytes
    (configuration and fragment), with no certificate of the instance
    changed since, is not run again: the upload that stored the file has
    just checked it. (haproxy re-parses on reload anyway, and a reload that
    fails to load is rolled back, so this only saves time.)

    A check that outlives the registry's ``check_timeout`` is killed and
    counts as failed with ``error``: 400 for an upload (the configuration
    is what hangs, e.g. ``lua-load`` of a script that never returns:
    refused like any invalid one, nothing stored), 500 for start and
    reload like every failed check there. The lock is released either way.
    """
    try:
        with open(config_path, "rb") as f:
            checked = f.read()
    except OSError:
        checked = None
    fragment = inst.write_fragment(checked)
    key = inst.files.check_key(config_path, fragment)
    if reuse and key is not None and inst._checked is not None and inst._checked[0] == key:
        return inst._checked[1]
    extra = inst.check_args()
    kwargs = {"extra": extra} if extra else {}
    try:
        valid, output = yield inst.owner.haproxy.check(config_path, fragment, cwd=inst.files.run_dir,
                                                       timeout=inst.check_timeout(), **kwargs)
    except CommandTimeout as e:
        log.error("{kind} {lid}: haproxy -c did not finish within {timeout}s; killed", kind=inst.kind,
                  lid=inst.id, timeout=e.timeout)
        details = (f"configuration check did not finish within {e.timeout:g} s (haproxy -c was "
                   f"killed; does the configuration read from standard input or loop while loading?)")
        if e.output:
            details += "\n" + e.output[-4000:]
        raise error(details, message=failure_message)
    if not valid:
        raise error(output or "haproxy -c failed without output", message=failure_message)
    if key is not None:  # content-based: a checked candidate counts for the stored copy too
        inst._checked = (key, output)
    return output


@inlineCallbacks
def own_pids(inst):
    if inst.proc is None or inst.proc.pid is None:
        return set()
    pids = {inst.proc.pid}
    try:
        info = yield inst.owner.haproxy.show_proc(inst.files.master_socket, timeout=2.0)
        pids |= info.all_pids
    except Exception:
        pass
    return pids


@inlineCallbacks
def check_binds(inst, config: bytes, failure_message: str, own=None):
    if own is None:
        own = yield own_pids(inst)
    problems = yield inst.owner.haproxy.bind_conflicts(bind_addresses(config), own)
    if problems:
        raise OperationFailed("\n".join(problems), message=failure_message)
