"""The package inventory reported by ``GET /v0.1/details``: ``[{name: version}]``.

Versions come from ``dpkg-query``, run as a child process (never in the
request path), and are cached atomically in ``<state_dir>/packages.json``,
following the spec's note on state: ask the running system, keep an on-disk
cache. On start the cache is served at once; one refresh is kicked once the
API accepts (packages may have been upgraded while the agent was down), and
another whenever the cache becomes older than ``[agent] packages_max_age``.
A failed or hung query (bounded by ``timeout``, then SIGKILL) keeps the last
good answer and is retried later.

The agent's own version is ``amphora.__version__``: the agent may be installed
from a wheel, and the running code's version is what matters.
"""

from __future__ import annotations

import os
import re

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from amphora import __version__
from amphora.command import BoundedCommand, CommandTimeout
from amphora.fsutil import atomic_write_json, read_json

log = Logger()

AGENT_PACKAGE = "amphora-agent"
# What the spec's example reports, in this order; [agent] packages adds to it.
DEFAULT_PACKAGES = ("haproxy", "keepalived", "openssl", "iproute2")
DPKG_QUERY = "/usr/bin/dpkg-query"
CACHE_NAME = "packages.json"
CACHE_FORMAT = 1
RETRY_MAX = 300.0
# Debian policy 5.6.7: lower case letters, digits, + - . ; at least two characters.
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_QUERY_FORMAT = "${Package}\\t${Version}\\t${db:Status-Abbrev}\\n"
# The query never inherits the agent's environment (locale, PATH games).
QUERY_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


_NOT_FOUND = b"no packages found matching"


class QueryFailed(Exception):
    """dpkg-query could not answer (exit status, signal, timeout)."""


def valid_names(names) -> list[str]:
    """The default names, then valid extra ``names`` in order; duplicates dropped."""
    result: list[str] = []
    for name in (*DEFAULT_PACKAGES, *names):
        if not _PACKAGE_NAME.fullmatch(name):
            log.warn("agent.packages: ignoring {name!r}: not a Debian package name", name=name)
            continue
        if name not in result and name != AGENT_PACKAGE:
            result.append(name)
    return result


def parse_dpkg_query(output: bytes) -> dict[str, str]:
    """``{package: version}`` of the *installed* packages in ``dpkg-query -W`` output.

    Lines are ``name<TAB>version<TAB>status``; the status abbreviation's second
    letter is ``i`` only when the package is installed (``rc`` = removed,
    configuration files left: not reported).
    """
    found: dict[str, str] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        name, version, status = parts[0].strip(), parts[1].strip(), parts[2]
        if len(status) >= 2 and status[1] == "i" and name and version and name not in found:
            found[name] = version
    return found


class PackageInventory(Service):
    """Installed versions of the load-balancing packages, cached on disk.

    ``document()`` is what the details route serves; it never waits. ``ready``
    (optional) returns a Deferred that fires when the API accepts: the first
    refresh waits for it so start-up and the first answers are never delayed
    by dpkg. ``query`` may be replaced (tests) by ``names -> Deferred[dict]``.
    """

    name = "packages"

    def __init__(self, reactor, state_dir: str, names=(), max_age: float = 86400.0, *,
                 dpkg_query: str = DPKG_QUERY, timeout: float = 60.0, ready=None,
                 agent_version: str = __version__):
        self.reactor = reactor
        self.path = os.path.join(state_dir, CACHE_NAME)
        self.names = valid_names(names)
        self.max_age = max_age
        self.dpkg_query = dpkg_query
        self.timeout = timeout
        self.ready = ready
        self.agent_version = agent_version
        self.versions: dict[str, str] = {}
        self.generated: float | None = None
        self.queries = 0  # how many queries were started (observability, tests)
        self._document = self._build()
        self._waiters: list[Deferred] = []
        self._next = None
        self._child = None  # the BoundedCommand of a query in flight
        self._failures = 0  # consecutive failed refreshes
        # A failed query is retried after at most 5 minutes (never later than max_age).
        retry = min(self.max_age, RETRY_MAX)
        self._retry = backoffPolicy(initialDelay=retry, maxDelay=retry, factor=1.0, jitter=lambda: 0.0)

    # -- what the API serves --------------------------------------------------

    def document(self) -> list[dict]:
        return self._document

    def _build(self) -> list[dict]:
        doc = [{name: self.versions[name]} for name in self.names if name in self.versions]
        # The agent goes after the installed defaults, before the operator's extras.
        position = sum(1 for entry in doc if next(iter(entry)) in DEFAULT_PACKAGES)
        doc.insert(position, {AGENT_PACKAGE: self.agent_version})
        return doc

    # -- cache ----------------------------------------------------------------

    def load_cache(self) -> bool:
        """Serve the on-disk cache if there is a usable one; True if so."""
        cached = read_json(self.path, None)
        if not isinstance(cached, dict) or cached.get("format") != CACHE_FORMAT:
            return False
        versions = cached.get("packages")
        generated = cached.get("generated")
        if not isinstance(versions, dict) or not isinstance(generated, (int, float)):
            return False
        self.versions = {str(k): str(v) for k, v in versions.items()}
        self.generated = float(generated)
        self._document = self._build()
        log.info("package versions from {path} ({count} packages)", path=self.path, count=len(self.versions))
        return True

    # -- life cycle -----------------------------------------------------------

    def startService(self):
        super().startService()
        self.load_cache()
        # Refresh once per start, after the API accepts: serving never waits for dpkg.
        waiting = self.ready() if self.ready is not None else succeed(None)
        waiting.addCallback(lambda _: self._refresh_and_schedule() if self.running else None)
        waiting.addErrback(lambda f: log.failure("package refresh at start failed", f))

    def stopService(self):
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._child is not None:
            # Return once the child is reaped, so no process outlives the service.
            return self._child.cancel()
        return None

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = self.reactor.callLater(max(delay, 0.0), self._refresh_and_schedule)

    def _refresh_and_schedule(self):
        d = self.refresh()

        def done(ok):
            self._failures = 0 if ok else self._failures + 1
            self._schedule(self.max_age if ok else self._retry(self._failures - 1))
        d.addCallback(done)
        return d

    # -- refresh --------------------------------------------------------------

    def refresh(self) -> Deferred:
        """Query the versions now (joins a query in flight); fires with True on success."""
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) > 1:
            return waiter
        self.queries += 1

        def ok(versions):
            self.versions = versions
            self.generated = self.reactor.seconds()
            self._document = self._build()
            try:
                atomic_write_json(self.path, {"format": CACHE_FORMAT, "generated": self.generated,
                                              "names": self.names, "packages": versions})
            except OSError as e:
                log.warn("cannot write the package cache {path}: {error}", path=self.path, error=e)
            log.info("package versions refreshed: {versions}", versions=versions)
            return True

        def failed(failure):
            log.warn("package query failed, keeping the previous versions: {error}",
                     error=failure.getErrorMessage())
            return False

        def finished(result):
            if isinstance(result, Failure):
                log.failure("package refresh failed", result)
                result = False
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(result)

        maybeDeferred(self.query, self.names).addCallbacks(ok, failed).addBoth(finished)
        return waiter

    def query(self, names: list[str]) -> Deferred:
        """Run dpkg-query for ``names`` (a bounded child, ``amphora.command``); fires with ``{name: version}``."""
        argv = [self.dpkg_query, "-W", "-f", _QUERY_FORMAT, "--", *names]
        try:
            command = BoundedCommand(self.reactor, argv, env=dict(QUERY_ENV), path="/", timeout=self.timeout)
        except Exception as e:
            return fail(QueryFailed(f"cannot run {self.dpkg_query}: {e}"))
        self._child = command

        def ended(result):
            out, err, code = result
            # Exit 1 with dpkg-query's "no packages found" (LC_ALL=C) means some names are
            # not installed: the others are still listed. Any other exit 1 is a failure.
            if code == 0 or (code == 1 and _NOT_FOUND in err):
                return parse_dpkg_query(out)
            signal = -code if code < 0 else None
            raise QueryFailed(f"{self.dpkg_query} exit {code if code >= 0 else None} signal {signal}: "
                              f"{err.decode('utf-8', 'replace').strip()[:200]}")

        def not_finished(failure):
            failure.trap(CommandTimeout, CancelledError)
            raise QueryFailed(str(failure.value))

        def forget(result):
            if self._child is command:
                self._child = None
            return result

        return command.result.addCallbacks(ended, not_finished).addBoth(forget)
