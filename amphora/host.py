"""Facts about this host that the API reports.

``HostFacts.load()`` learns what does not change while the agent runs (the
haproxy version) once, at start, through a child process, so no request ever
waits on it.
"""

from __future__ import annotations

import os
import re

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

log = Logger()

_VERSION = re.compile(rb"(?:HA-Proxy|HAProxy) version (\S+)")


def parse_haproxy_version(output: bytes) -> str | None:
    match = _VERSION.search(output)
    return match.group(1).decode("ascii", "replace") if match else None


class HostFacts:
    def __init__(self, config, reactor):
        self.config = config
        self.reactor = reactor
        self.hostname = config.hostname
        self.amphora_id = config.agent.amphora_id
        self.haproxy_version = "unknown"

    @inlineCallbacks
    def load(self):
        out, err, code = yield getProcessOutputAndValue(
            self.config.haproxy.binary, ["-v"], env=dict(os.environ), reactor=self.reactor)
        version = parse_haproxy_version(out + err)
        if code != 0 or version is None:
            log.error("cannot learn the haproxy version from {binary} -v (exit {code})",
                      binary=self.config.haproxy.binary, code=code)
        else:
            self.haproxy_version = version
            log.info("haproxy version {version}", version=version)
