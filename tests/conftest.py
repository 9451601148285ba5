"""Shared fixtures: small exported artifacts of every model family, built once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Environment variables naming the caches edgetta writes: rewritten engine graphs and prepared streams.
CACHE_VARIABLES = ("EDGETTA_CACHE_DIR", "EDGETTA_CACHE")


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory) -> Iterator[Path]:
    """Every cache of the test session (and of the subprocesses it starts) lives in a temporary folder, never
    in the user's ~/.cache; the previous environment is restored at the end."""
    root = tmp_path_factory.mktemp("caches")
    saved = {name: os.environ.get(name) for name in CACHE_VARIABLES}
    os.environ["EDGETTA_CACHE_DIR"] = str(root / "edgetta")
    os.environ["EDGETTA_CACHE"] = str(root / "streams")
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# Small configurations of each family, so the whole suite stays within minutes on 2 cores.
FAMILY_CONFIGS = {
    "resnet_bn": ({"blocks": 1, "width": 8}, (4, 3, 32, 32)),
    "resnet_gn": ({"blocks": 1, "width": 8}, (4, 3, 32, 32)),
    "sleep_cnn": ({"width": 8}, (4, 1, 3000)),
    "tiny_vit": ({"dim": 32, "depth": 2, "heads": 2}, (4, 3, 32, 32)),
    "mobilenet": ({"width": 8}, (4, 3, 32, 32)),
}


def make_family_model(name: str, seed: int = 0):
    """A family model with non-trivial BN running statistics (a few train-mode forwards)."""
    import torch

    from edgetta.zoo.models import FAMILIES

    kwargs, shape = FAMILY_CONFIGS[name]
    torch.manual_seed(seed)
    model = FAMILIES[name](**kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape[1:]) * 1.5 + 0.3)
    return model.eval(), shape


def run_without_torch(body: str, timeout: int = 600):
    """Run Python ``body`` in a subprocess where any import of torch raises; it must also end with torch
    absent from sys.modules. Returns the CompletedProcess."""
    import subprocess
    import sys

    guard = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        raise ImportError('torch import attempted: ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
    )
    check = "\nassert 'torch' not in sys.modules\nsys.exit(rc)\n"
    return subprocess.run([sys.executable, "-c", guard + body + check], capture_output=True, text=True, timeout=timeout)


class ArtifactCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, tuple[Path, dict]] = {}

    def get(self, name: str) -> tuple[Path, dict]:
        if name not in self.built:
            import torch

            from edgetta.export import export_model

            model, shape = make_family_model(name)
            torch.manual_seed(1)
            out = self.root / name
            manifest = export_model(model, torch.randn(*shape), out)
            self.built[name] = (out, manifest)
        return self.built[name]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> ArtifactCache:
    pytest.importorskip("torch")
    return ArtifactCache(tmp_path_factory.mktemp("artifacts"))
