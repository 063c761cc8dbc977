"""amphora-ctl: drive one amphora agent from a shell or a script.

Talks to the agent's API over mutual TLS (treq on the Twisted reactor, run by
``twisted.internet.task.react``) with a client certificate, one request per
invocation. Human-readable output by default; ``--json`` prints the agent's
JSON as it came (errors too), for scripts.

Connection settings come from flags or the environment:

    --url    AMPHORA_URL    https://host:port of the agent (default https://localhost:9443)
    --cert   AMPHORA_CERT   client certificate (PEM; may also hold the key)
    --key    AMPHORA_KEY    client private key, when not in --cert
    --ca     AMPHORA_CA     CA that signed the agent's certificate
    --server-name AMPHORA_SERVER_NAME   name to verify in the agent's certificate
                            (default: the URL's host)

Exit status: 0 the agent answered 2xx; 4 it answered 4xx; 5 it answered 5xx;
3 it could not be reached (connection refused, TLS failure, timeout);
2 bad usage; 1 any other local problem (unreadable file, unexpected answer).
Errors are printed as the agent's message and details.

The package, one job a module: ``commands`` (the argument parser and the request
each command makes), ``http`` (one request over mutual TLS), ``render`` (human
output), ``heartbeats`` (the heartbeat listener), ``common`` (exit statuses).
"""

from __future__ import annotations

import sys

from amphora.ctl.commands import Call, build_parser, plan
from amphora.ctl.common import (DEFAULT_URL, EXIT_CLIENT_ERROR, EXIT_CONNECTION, EXIT_LOCAL, EXIT_OK,
                                EXIT_SERVER_ERROR, EXIT_USAGE, V, LocalError, UsageError, exit_code_for)
from amphora.ctl.heartbeats import heartbeats
from amphora.ctl.http import connection_settings, run
from amphora.ctl.render import (show_beat, show_document, show_error, show_listener, show_listeners,
                                show_ok, table)

__all__ = [
    "Call", "DEFAULT_URL", "EXIT_CLIENT_ERROR", "EXIT_CONNECTION", "EXIT_LOCAL", "EXIT_OK",
    "EXIT_SERVER_ERROR", "EXIT_USAGE", "LocalError", "UsageError", "V", "build_parser",
    "exit_code_for", "heartbeats", "main", "plan", "run", "show_beat", "show_document", "show_error",
    "show_listener", "show_listeners", "show_ok", "table",
]


def main(argv: list[str] | None = None) -> None:
    """The console script. Exits with the status described in the module docstring."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "heartbeats":
            raise SystemExit(heartbeats(args))
        # usage and local errors surface before any network I/O (and stdin is read once)
        call = plan(args)
        connection_settings(args)
    except UsageError as e:
        sys.stderr.write(f"amphora-ctl: {e}\n")
        raise SystemExit(EXIT_USAGE) from None
    except LocalError as e:
        sys.stderr.write(f"amphora-ctl: {e}\n")
        raise SystemExit(EXIT_LOCAL) from None

    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    async def _main(reactor):
        code = await run(reactor, args, call)
        if code:
            raise SystemExit(code)

    react(lambda reactor: ensureDeferred(_main(reactor)))
