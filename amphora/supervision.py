"""The vocabulary of supervision: process states, the frozen policy, the failure.

Shared by ``amphora.process.SupervisedProcess`` and its users (the listener
manager, keepalived), which pick a ``SupervisionPolicy`` and read states.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import psutil
from twisted.application.internet import backoffPolicy

class ProcessState(StrEnum):
    """The supervisor's states (see ``amphora.process``)."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    BACKOFF = "BACKOFF"
    FAILED = "FAILED"


STOPPED = ProcessState.STOPPED
STARTING = ProcessState.STARTING
RUNNING = ProcessState.RUNNING
STOPPING = ProcessState.STOPPING
BACKOFF = ProcessState.BACKOFF
FAILED = ProcessState.FAILED


def _no_jitter() -> float:
    return 0.0


@dataclass(frozen=True)
class SupervisionPolicy:
    """How one child is supervised: deadlines, signals and the restart backoff (seconds)."""

    ready_interval: float = 0.05
    start_timeout: float = 10.0
    stop_signal: str | int = "TERM"
    stop_timeout: float = 10.0
    kill_grace: float = 5.0
    kill_group: bool = True
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    max_restarts: int = 6
    stable_after: float = 30.0
    poll_interval: float = 1.0

    def restart_delay(self, failures: int) -> float:
        """Delay before restart number ``failures`` (1, 2, ...): ``backoff_initial`` doubled, capped."""
        policy = backoffPolicy(initialDelay=self.backoff_initial, maxDelay=self.backoff_max, factor=2.0,
                               jitter=_no_jitter)
        return policy(failures - 1)


class ProcessFailed(Exception):
    """The child did not come up (or could not be stopped); ``output`` is what it said."""

    def __init__(self, reason: str, output: str = ""):
        self.reason = reason
        self.output = output
        super().__init__(reason + (("\n" + output) if output else ""))


def process_identity(pid: int):
    """A token that identifies a live, non-zombie process (its start time), or None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None
