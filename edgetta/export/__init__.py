"""torch -> artifact. The only package (with training tools and the cloud side of sync) that imports torch."""

from edgetta.export.api import export_model
from edgetta.export.spec import resolve_spec

__all__ = ["export_model", "resolve_spec"]
