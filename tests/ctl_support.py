"""Running the real ``amphora-ctl`` (``python -m amphora.ctl``, the console script's
``main``) as a child process from a test, without blocking the reactor that
serves the in-process agent."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.helpers import REPO


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def ctl_env(pki, url: str, **extra: str) -> dict:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": REPO,
        "AMPHORA_URL": url,
        "AMPHORA_CA": pki.paths["ca"],
        "AMPHORA_CERT": pki.paths["client_cert"],
        "AMPHORA_KEY": pki.paths["client_key"],
        "AMPHORA_SERVER_NAME": "localhost",
    }
    env.update(extra)
    return env


async def ctl(env: dict, *argv: str, stdin: bytes | None = None) -> Result:
    args = ["-m", "amphora.ctl", *argv]
    if stdin is not None:
        # getProcessOutputAndValue has no stdin: let a shell feed it from a file
        import tempfile
        fd, path = tempfile.mkstemp(prefix="amp9-ctl-stdin-")
        os.write(fd, stdin)
        os.close(fd)
        try:
            out, err, code = await getProcessOutputAndValue(
                "/bin/sh", ["-c", 'exec "$0" "$@" < "$AMP9_STDIN"', sys.executable, *args],
                env=dict(env, AMP9_STDIN=path), path=REPO, reactor=reactor)
        finally:
            os.unlink(path)
    else:
        out, err, code = await getProcessOutputAndValue(sys.executable, args, env=env, path=REPO,
                                                        reactor=reactor)
    return Result(code, out.decode(), err.decode())
