"""``edgetta keys ...`` and ``edgetta bundle ...`` commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's subcommands to the ``edgetta`` parser (none yet)."""
