"""Every package under amphora/ is declared in pyproject.toml: a missing one is absent from
wheels and from the (strict) editable install, so the installed agent fails to import it."""

from __future__ import annotations

import os
import tomllib

from tests.helpers import REPO


def test_every_amphora_package_is_declared():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        declared = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {os.path.relpath(root, REPO).replace(os.sep, ".")
             for root, _dirs, files in os.walk(os.path.join(REPO, "amphora")) if "__init__.py" in files}
    assert found - declared == set()
