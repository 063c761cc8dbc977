"""One request to the agent over mutual TLS (treq on the Twisted reactor), its answer
written out and turned into an exit status."""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import urlsplit

from amphora.ctl.common import EXIT_CONNECTION, EXIT_LOCAL, LocalError, UsageError, exit_code_for
from amphora.ctl.commands import Call, plan
from amphora.ctl.render import show_error


def connection_settings(args) -> dict:
    if not args.ca:
        raise UsageError("the agent's CA is required: --ca or AMPHORA_CA")
    if not args.cert:
        raise UsageError("a client certificate is required: --cert or AMPHORA_CERT")
    parts = urlsplit(args.url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"--url must be https://host[:port], got {args.url!r}")
    for path in (args.ca, args.cert, args.key):
        if path and not os.access(path, os.R_OK):
            raise LocalError(f"cannot read {path}")
    return {"ca": args.ca, "cert": args.cert, "key": args.key,
            "server_name": args.server_name or parts.hostname}


def _describe_failure(failure, timeout: float) -> str:
    from twisted.internet.defer import CancelledError
    from twisted.web.client import ResponseFailed, ResponseNeverReceived

    error = failure.value
    if isinstance(error, (ResponseNeverReceived, ResponseFailed)) and error.reasons:
        error = error.reasons[0].value  # the real cause (TLS, connection lost, cancel)
    if isinstance(error, CancelledError):  # treq cancels the request when --timeout expires
        return f"no answer within {timeout:g}s (--timeout)"
    return f"{type(error).__name__}: {error}"


async def run(reactor, args, call: Call | None = None, out=None, err=None) -> int:
    """Does one request (``call``, or what ``plan(args)`` says); writes the answer;
    returns the exit status."""
    # imported here so that `--help` and usage errors stay fast
    from twisted.python.failure import Failure

    from amphora.client import make_client

    out = out or sys.stdout
    err = err or sys.stderr
    conn = connection_settings(args)
    call = call or plan(args)
    url = args.url.rstrip("/") + call.path
    try:
        client = make_client(reactor, conn["ca"], conn["cert"], conn["key"], persistent=False,
                             server_name=conn["server_name"])
    except Exception as e:  # unreadable or malformed PEM: a local problem, said in one line
        err.write(f"amphora-ctl: cannot load the TLS credentials (--ca/--cert/--key): {e}\n")
        return EXIT_LOCAL
    kwargs = {"timeout": args.timeout}
    if call.json_body is not None:
        kwargs["json"] = call.json_body
    elif call.body is not None:
        kwargs["data"] = call.body
    if call.params:
        kwargs["params"] = call.params
    try:
        response = await client.request(call.method, url, **kwargs)
        content = await response.content()
    except Exception:
        reason = _describe_failure(Failure(), args.timeout)
        if args.json:
            out.write(json.dumps({"message": "Connection failed", "details": reason}) + "\n")
        err.write(f"amphora-ctl: cannot get an answer from {args.url}: {reason}\n")
        return EXIT_CONNECTION
    code = response.code
    ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip()
    if ctype == b"application/json":
        try:
            doc = json.loads(content)
        except ValueError:
            err.write(f"amphora-ctl: {code}: the agent sent malformed JSON\n")
            return EXIT_LOCAL
        if args.json:
            out.write(json.dumps(doc, indent=2) + "\n")
        if 200 <= code < 300:
            if not args.json:
                text = call.show(doc) if call.show else json.dumps(doc, indent=2)
                out.write(text + "\n")
        else:
            err.write(f"amphora-ctl: {show_error(code, doc)}\n")
        return exit_code_for(code)
    text = content.decode("utf-8", "replace")
    if 200 <= code < 300:
        if args.json:
            out.write(json.dumps({"text": text}) + "\n")
        else:
            out.write(text if text.endswith("\n") or not text else text + "\n")
    else:
        err.write(f"amphora-ctl: {code}: {text[:500]}\n")
    return exit_code_for(code)
