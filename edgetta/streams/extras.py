"""Optional libraries, imported only by the sources and preprocessors that need them.

``import edgetta.streams`` needs numpy only; OpenCV comes with ``pip install 'edgetta[daemon]'``, edfio,
pylsl and scipy with ``pip install 'edgetta[eeg]'``. A missing one raises :class:`MissingExtra` naming the
extra to install, at the moment a source or preprocessor that needs it is created.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgetta.errors import EdgettaError

EXTRAS = {
    "cv2": ("OpenCV", "daemon"),
    "scipy.signal": ("scipy", "eeg"),
    "edfio": ("edfio", "eeg"),
    "pylsl": ("pylsl", "eeg"),
}


class MissingExtra(EdgettaError, ImportError):
    """An optional library a source or preprocessor needs is not installed; the message names the extra."""


def need(module: str, what: str) -> ModuleType:
    """Import ``module`` (a key of :data:`EXTRAS`) for ``what`` (e.g. "video sources"), or raise
    :class:`MissingExtra` with the pip command that installs it."""
    library, extra = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({exc})"
        raise MissingExtra(
            f"{what} need {library}, which is not installed{detail}; install it with: pip install 'edgetta[{extra}]'"
        ) from exc
    except (OSError, RuntimeError) as exc:  # the wrapper is there but its native library (liblsl) is not
        raise MissingExtra(
            f"{what} need {library}, which could not load its native library ({exc}); "
            f"reinstall it with: pip install --force-reinstall 'edgetta[{extra}]'"
        ) from exc
