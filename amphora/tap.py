"""twistd glue: ``twistd -n amphora-agent --config FILE``."""

from __future__ import annotations

import signal
import sys

from twisted.python import usage

from amphora.config import ConfigError, load_config
from amphora.logging import offer_observer

DEFAULT_CONFIG = "/etc/octavia/amphora-agent.conf"


class Options(usage.Options):
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Path to the agent's INI configuration file."],
    ]

    def postOptions(self):
        try:
            self["agent_config"] = load_config(self["config"])
        except ConfigError as e:
            # One line that names the option; never a traceback or a usage dump.
            sys.stderr.write(f"amphora-agent: configuration error: {e}\n")
            raise SystemExit(1)


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    from amphora.agent import build_agent

    config = options.get("agent_config") or load_config(options["config"])
    reactor.callWhenRunning(_stop_on_sigterm, reactor)
    agent = build_agent(config, reactor)
    # twistd's options (the parent of ours) say where its log goes: offer it the agent's cheap observer.
    agent.parent_hooks.append(lambda application: offer_observer(application, getattr(options, "parent", None)))
    return agent


def _stop_on_sigterm(reactor) -> None:
    """SIGTERM (systemd, operators) and SIGINT (Ctrl-C on ``make run``) are the
    ordinary ways to stop the agent: stop the reactor cleanly and exit 0,
    instead of twistd's default of re-raising the signal after shutdown
    (exit status -15 / -2)."""
    if not hasattr(reactor, "stop") or not hasattr(reactor, "callFromThread"):
        return

    def handler(signum, frame):
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
