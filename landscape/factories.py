"""User code: ``package.module:factory`` names, imported only when the user gave them.

A factory name in a file (a checkpoint's model or data spec) is never imported on the
file's word alone: reading a file must not run code. Callers resolve which names the user
gave (command line or Python) and only those reach :func:`import_factory`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Callable

from landscape.errors import UserError

_FACTORY_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
BUILTIN_PREFIXES = ("torchvision:",)  # "prefix:name" forms that name library code, not user code


def is_user_factory(name: Any) -> bool:
    """True for ``package.module:factory`` (user code), False for built-in names and torchvision:NAME."""
    return isinstance(name, str) and ":" in name and not name.startswith(BUILTIN_PREFIXES)


def import_factory(spec: str, what: str) -> Callable[..., Any]:
    """Import ``package.module:attr`` and return the callable (``what``: "model" or "dataset", for messages)."""
    if not _FACTORY_RE.fullmatch(spec):
        raise UserError(f"malformed {what} factory {spec!r}: expected package.module:factory")
    module_name, attr = spec.split(":")
    # Console scripts do not put the working directory on sys.path, but users expect
    # `--model mymodels:net` to find ./mymodels.py. Appending never shadows installed packages.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import module {module_name!r} for {what} {spec!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"module {module_name!r} has no attribute {attr!r} ({what} {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{what} factory {spec!r} is not callable")
    return obj
