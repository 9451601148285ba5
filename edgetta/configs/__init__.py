"""The bundled presets: one YAML file per preset (``edgetta/configs/<name>.yaml``)."""

from __future__ import annotations

from importlib import resources


def preset_names() -> list[str]:
    """Names of the bundled presets (light: the command line lists them without importing the runtime)."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
