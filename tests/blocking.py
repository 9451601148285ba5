"""Run Python code in a subprocess where chosen top-level packages cannot be imported (modelled on
``tests.conftest.run_without_torch``): any import of them raises ModuleNotFoundError, as on an install
without them, and none of them may be in ``sys.modules`` at the end."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("torch", "scipy", "matplotlib")


def run_blocking(body: str, blocked: tuple[str, ...] = OPTIONAL, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``body`` (which sets ``rc``) with ``blocked`` packages unimportable; returns the CompletedProcess."""
    guard = (
        "import sys, builtins\n"
        f"BLOCKED = {tuple(blocked)!r}\n"
        "real = builtins.__import__\n"
        "def guard(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    if level == 0 and name.split('.')[0] in BLOCKED:\n"
        "        raise ModuleNotFoundError(f'{name} is blocked (not installed)', name=name)\n"
        "    return real(name, globals, locals, fromlist, level)\n"
        "builtins.__import__ = guard\n"
        "rc = 1\n"
    )
    check = (
        "\nloaded = sorted({m.split('.')[0] for m in sys.modules} & set(BLOCKED))\n"
        "assert not loaded, f'imported: {loaded}'\n"
        "sys.exit(rc)\n"
    )
    return subprocess.run([sys.executable, "-c", guard + body + check], capture_output=True, text=True, timeout=timeout)
