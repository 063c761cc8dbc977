"""``amphora-ctl heartbeats``: receive and print heartbeats, as a controller's health manager sees them."""

from __future__ import annotations

import json
import sys

from amphora.ctl.common import EXIT_CONNECTION, EXIT_LOCAL, EXIT_OK, LocalError, UsageError
from amphora.ctl.render import show_beat


def heartbeats(args) -> int:
    """Receive and print heartbeats: a thin wrapper over amphora.heartbeat.receiver's library API.

    Does not talk to the agent's API (no certificate needed): it is what a
    controller's health manager sees. ``--count N`` stops after N accepted beats;
    ``--wait S`` gives up with exit status 3 when they have not come in S seconds.
    """
    try:
        from amphora.heartbeat.receiver import HeartbeatReceiver, listen, parse_bind, read_key
    except ImportError as e:
        sys.stderr.write(f"amphora-ctl: the heartbeat receiver is not available: {e}\n")
        return EXIT_LOCAL
    try:
        key = read_key(args.key, args.key_file)
    except (OSError, UnicodeDecodeError) as e:
        raise LocalError(f"cannot read {args.key_file}: {getattr(e, 'strerror', None) or e}") from None
    if not key:
        raise UsageError("a key is required: --key-file, --key or AMPHORA_HEARTBEAT_KEY")
    try:
        host, port = parse_bind(args.bind)
    except Exception as e:
        raise UsageError(f"--bind: {e}") from None

    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.task import react

    async def _main(reactor):
        done = Deferred()

        def on_beat(beat):
            document = beat.document()
            sys.stdout.write((json.dumps(document, sort_keys=True) if args.json else show_beat(document))
                             + "\n")
            sys.stdout.flush()
            if args.count and receiver.accepted >= args.count and not done.called:
                done.callback(None)

        def on_reject(error, source):
            sys.stderr.write(f"amphora-ctl: rejected a packet from {source[0]}:{source[1]}: "
                             f"{error.reason} ({error.detail}); counts {dict(receiver.rejected)}\n")
            sys.stderr.flush()

        receiver = HeartbeatReceiver(key, on_beat=on_beat, on_reject=on_reject)
        try:
            listening = listen(reactor, receiver, host, port)
        except Exception as e:
            sys.stderr.write(f"amphora-ctl: cannot listen on {host}:{port}: {e}\n")
            raise SystemExit(EXIT_LOCAL)
        address = listening.getHost()
        sys.stderr.write(f"amphora-ctl: listening for heartbeats on {address.host}:{address.port}\n")
        sys.stderr.flush()
        timer = None
        if args.wait:
            def expire():
                sys.stderr.write(f"amphora-ctl: {receiver.accepted} heartbeat(s) in {args.wait:g}s; "
                                 f"rejected {dict(receiver.rejected)}\n")
                done.errback(SystemExit(EXIT_CONNECTION))
            timer = reactor.callLater(args.wait, expire)
        try:
            await done  # until --count beats, --wait expires, or Ctrl-C / SIGTERM (react then exits 0)
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            await listening.stopListening()

    react(lambda reactor: ensureDeferred(_main(reactor)))
    return EXIT_OK  # pragma: no cover - react exits
