"""Listener logs: collect each haproxy's log lines, keep them on disk, forward them.

One object, ``ListenerLogs``, owned by the composition root as ``agent.logs``:

- **Collector.** Every listener gets a UNIX datagram socket owned by the agent,
  ``<run_dir>/logs/<uuid>.sock`` (mode 0666, so a haproxy that dropped its
  privileges with ``user``/``uid`` can still send), read by the reactor
  (``listenUNIXDatagram``: no thread per listener, no syslog daemon). haproxy
  learns about it from the text ``config_hook`` returns, a ``global`` section
  with ``log unix@<sock> len 8192 format rfc5424 local0`` that the listener
  manager puts in its agent-owned configuration file. haproxy resolves
  ``log global`` while it parses, so that file must come *before* the uploaded
  one on haproxy's command line (``-f agent.cfg -f haproxy.cfg``); the uploaded
  configuration must say ``log global`` in its ``defaults`` or frontends.
- **Files.** Each listener's lines are appended to ``<log_dir>/<uuid>.log``
  through a ``RotatingFile``: buffered (flushed within ``FLUSH_DELAY`` seconds
  or at ``FLUSH_BYTES``, never an fsync per line), rotated by the agent at
  ``[logs] max_bytes`` keeping ``[logs] backups`` files. A full disk or an
  unwritable file drops lines, is logged once, and never raises.
- **Forwarder.** With ``[logs] forward = udp://host:port`` or ``tcp://...``
  every line is also sent as an RFC 5424 syslog message (TCP framed by octet
  counting, RFC 6587), tagged with the structured-data element
  ``[amphora@32473 amphora_id="..." listener_id="..."]``. Lines wait in a
  bounded queue while the target is down or slow; when the queue is full the
  oldest are dropped and counted (``lost``). TCP reconnects on its own with
  exponential backoff (``ClientService``); UDP reopens its socket on a
  ``backoffPolicy`` too.
- **Delete.** ``delete_hook`` (registered in ``agent.listeners.delete_hooks``)
  reads what haproxy left in the socket, flushes the file and waits, at most
  ``DELETE_FLUSH_TIMEOUT`` seconds, until the forwarder has handed everything
  to the kernel; then removes the socket, the log file and its backups.

haproxy's lines are stored and forwarded as they are (the message part is
never rewritten); the agent's own log events here never carry line contents.

Modules: ``syslog`` (parsing and framing, pure functions), ``logfile`` (the
rotating file on ``twisted.python.logfile.LogFile``, and the tail reader),
``forward`` (bounded queue, UDP and TCP forwarders), ``collector`` (the
``ListenerLogs`` service the agent wires).
"""

from amphora.listeners.logs.collector import ListenerLogs, Losses

__all__ = ["ListenerLogs", "Losses"]
