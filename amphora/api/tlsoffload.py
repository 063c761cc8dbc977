"""TLS handshakes off the reactor thread: the API's TLS layer with the costly steps in threads.

A new mutual-TLS connection costs the server about 0.9 ms of OpenSSL work
(RSA-2048: signing its CertificateVerify on the ClientHello, checking the
client's chain on its second flight), close to half of a whole new-connection
request. Twisted's ``TLSMemoryBIOProtocol`` does that work in the reactor
thread, so the agent serves new connections on one core however many clients
connect, where haproxy uses every core.

``OffloadingTLS`` runs each handshake step (``bio_write`` of the received
bytes, ``do_handshake``) in a small thread pool of its own. OpenSSL runs
without the GIL there (pyOpenSSL's calls go through cffi, which releases it),
so the reactor thread goes on serving requests meanwhile. While a step runs
the connection's ``SSL.Connection`` belongs to that thread alone: bytes that
arrive are held and fed in order after it, and a ``connectionLost`` is
delivered once it is over. Everything after the handshake (record encryption,
a few microseconds per request) stays on the reactor thread as before.

On a single CPU there is nothing to win: ``tls_factory`` then builds Twisted's
own factory (``handshake_threads() == 0``).
"""

from __future__ import annotations

import os

from OpenSSL.SSL import Error, WantReadError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

MAX_THREADS = 4

DONE, WANT_READ = "done", "want-read"


def handshake_threads() -> int:
    """Threads for handshakes: one per CPU this process may run on (at most ``MAX_THREADS``); 0
    with a single CPU, where a thread hop only adds cost."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(cpus, MAX_THREADS)


def _step(connection, data: bytes):
    """One handshake step, in a pool thread: (DONE | WANT_READ, None) or (None, the error)."""
    try:
        connection.bio_write(data)
        connection.do_handshake()
    except WantReadError:
        return WANT_READ, None
    except Error as e:
        return None, e
    return DONE, None


class OffloadingTLS(BufferingTLSTransport):
    """``BufferingTLSTransport`` whose handshake steps run in ``factory.pool``."""

    _busy = False            # a step runs in the pool: the SSL.Connection is not ours to touch
    _held: list | None = None  # bytes that arrived meanwhile
    _lost: Failure | None = None  # the connection was lost meanwhile
    _shutdown_due = False    # a TLS shutdown was asked for meanwhile

    def dataReceived(self, data):
        if self._busy:
            self._held.append(data)
        elif self._handshakeDone:
            super().dataReceived(data)
        elif not self._aborted:
            self._busy, self._held = True, []
            factory = self.factory
            deferToThreadPool(factory.reactor, factory.pool, _step, self._tlsConnection, data).addCallbacks(
                self._stepped, self._failed)

    def _failed(self, failure):
        self._stepped((None, failure.value))

    def _stepped(self, result):
        self._busy = False
        held, self._held = b"".join(self._held or ()), None
        if self._lost is not None:
            lost, self._lost = self._lost, None
            super().connectionLost(lost)
            return
        if self._aborted:
            return
        if self._shutdown_due:
            self._shutdown_due = False
            super()._shutdownTLS()
            return
        outcome, error = result
        if error is not None:
            # Twisted's own handling of a failed handshake (alert sent, connection closed)
            self._tlsShutdownFinished(Failure(error))
            return
        if outcome == WANT_READ:
            self._flushSendBIO()
        else:
            self._handshakeDone = True
            if IHandshakeListener.providedBy(self.wrappedProtocol):
                self.wrappedProtocol.handshakeCompleted()
            # What the base class does after a handshake completes within dataReceived: the
            # client's first request may have come in the same flight as its Finished.
            if self._appSendBuffer:
                self._unbufferPendingWrites()
            self._flushReceiveBIO()
        if held and self.connected and not self._lostTLSConnection:
            self.dataReceived(held)

    def _write(self, data):
        if self._busy:  # (a write before the handshake is over) sent once it is
            self._bufferedWrite(data)
            return
        super()._write(data)

    def _shutdownTLS(self):
        if self._busy:
            if self._aborted:  # the transport is being aborted: no alert to send
                self.transport.loseConnection()
            else:
                self._shutdown_due = True
            return
        super()._shutdownTLS()

    def connectionLost(self, reason):
        if self._busy:
            self._lost = reason  # delivered when the step is over
            return
        super().connectionLost(reason)


class OffloadingTLSFactory(TLSMemoryBIOFactory):
    """A server-side ``TLSMemoryBIOFactory`` whose connections hand handshakes to ``pool``."""

    protocol = OffloadingTLS

    def __init__(self, context_factory, wrapped_factory, reactor, pool: ThreadPool, clock=None):
        super().__init__(context_factory, False, wrapped_factory, clock=clock)
        self.reactor = reactor
        self.pool = pool


def tls_factory(context_factory, wrapped_factory, reactor, threads: int | None = None):
    """The API's TLS factory and the pool to start and stop with it (None: no offloading)."""
    threads = handshake_threads() if threads is None else threads
    if threads < 1:
        return TLSMemoryBIOFactory(context_factory, False, wrapped_factory), None
    pool = ThreadPool(minthreads=0, maxthreads=threads, name="tls-handshake")
    return OffloadingTLSFactory(context_factory, wrapped_factory, reactor, pool), pool
