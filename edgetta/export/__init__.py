"""torch -> artifact. The only package (with training tools and the cloud side of sync) that imports torch."""

from edgetta.export.api import check_output_dir, export_model
from edgetta.export.fisher import load_calibration
from edgetta.export.spec import resolve_spec

__all__ = ["check_output_dir", "export_model", "load_calibration", "resolve_spec"]
