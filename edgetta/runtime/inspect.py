"""Human-readable description of an artifact (used by ``edgetta inspect`` and ``edgetta export``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetta.contract import Manifest, check_hashes, read_manifest


def _param_count(manifest: Manifest) -> tuple[int, int]:
    total = trainable = 0
    for layer in manifest.norm_layers:
        n = sum(1 for name in (layer.weight, layer.bias) if name) * layer.features
        total += n
        trainable += n if layer.trainable else 0
    return total, trainable


def describe(path: str | Path, manifest: Manifest | Mapping[str, Any] | None = None) -> str:
    """The manifest in human terms; ``manifest`` (typed, or the dict export_model returns) saves reading it."""
    if manifest is None:
        manifest = read_manifest(path)
    elif not isinstance(manifest, Manifest):
        manifest = Manifest.from_json(manifest)
    raw = manifest.raw
    total, trainable = _param_count(manifest)
    layers = manifest.norm_layers
    kinds: dict[str, int] = {}
    for layer in layers:
        kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
    params_path = Path(path, manifest.params.file)
    params_bytes = params_path.stat().st_size if params_path.exists() else 0
    spec = manifest.input
    shape = ["B" if d is None else str(d) for d in spec.shape]
    lines = [
        f"artifact {path}  (format {manifest.format} v{manifest.version}, opset {manifest.opset})",
        f"  model        {raw.get('model', '?')}, input {spec.name} [{', '.join(shape)}] {spec.dtype}",
        f"  classes      {manifest.num_classes}: {', '.join(manifest.class_names[:10])}"
        + (" ..." if manifest.num_classes > 10 else ""),
        f"  norm layers  {len(layers)} (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")",
        f"  parameters   {total} norm affine values, {trainable} trainable "
        f"({sum(1 for la in layers if la.trainable)} trainable layers); params file {params_bytes} bytes",
        "  exported by  "
        + ", ".join(f"{k} {v}" for k, v in dict(raw.get("exporter") or {}).items())
        + f" in {raw.get('export_seconds', '?')} s",
    ]
    fisher = manifest.fisher
    lines.append(f"  fisher       {'from ' + str(fisher.samples) + ' samples' if fisher else 'none'}")
    verification = raw.get("verification")
    if verification:
        lines.append("  verification (norm-relative error vs float64 torch):")
        for r in verification["results"]:
            lines.append(
                f"    bn_alpha={r['bn_alpha']:.0f}  logits {max(r['logits_infer'], r['logits_adapt']):.1e}  "
                f"entropy {r['entropy']:.1e}  grads max {r['grad_max']:.1e} ({r['worst_grad']}), "
                f"all {r['grad_total']:.1e}"
            )
    else:
        lines.append("  verification not run (exported with --no-verify)")
    lines.append("  layers:")
    for layer in layers:
        lines.append(f"    {'T' if layer.trainable else '-'} {layer.module:<32} {layer.kind:<12} {layer.features}")
    return "\n".join(lines)


def integrity_problems(path: str | Path) -> list[str]:
    return check_hashes(path, read_manifest(path))


def trt_lint_artifact(path: str | Path) -> tuple[bool, str]:
    import onnx

    from edgetta.runtime.lint import lint_model

    manifest = read_manifest(path)
    ok = True
    lines = ["TensorRT lint:"]
    for which, entry in manifest.graphs.items():
        report = lint_model(onnx.load(str(Path(path) / entry.file)))
        ok = ok and report.ok
        lines.append(f"  {which}: {'ok' if report.ok else 'FAILED'}")
        lines += [f"    error: {e}" for e in report.errors] + [f"    warning: {w}" for w in report.warnings]
    return ok, "\n".join(lines)
