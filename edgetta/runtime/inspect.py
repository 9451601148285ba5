"""Human-readable description of an artifact (used by ``edgetta inspect`` and ``edgetta export``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetta.contract import ANCHOR_PREFIX, FISHER_PREFIX, MANIFEST_FILE, Manifest, check_hashes, read_manifest


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
    try:
        lines.append(size_report(path, manifest))
    except Exception as exc:  # noqa: BLE001 - a damaged file: the integrity check reports it
        lines.append(f"  sizes        unavailable ({type(exc).__name__}: {exc})")
    lines.append("  layers:")
    for layer in layers:
        lines.append(f"    {'T' if layer.trainable else '-'} {layer.module:<32} {layer.kind:<12} {layer.features}")
    return "\n".join(lines)


def artifact_sizes(path: str | Path, manifest: Manifest | None = None) -> dict[str, Any]:
    """Bytes of each listed file, of the model's float32 weights (each distinct graph constant once, whether
    embedded in a graph or in the shared weights file) plus its norm parameters and statistics (the graph-input
    tensors of params.safetensors), and the ratio of the files' total to that."""
    import onnx
    from safetensors.numpy import load_file

    directory = Path(path)
    manifest = manifest or read_manifest(directory)
    listed = [entry.file for _, entry in manifest.files()] + [MANIFEST_FILE]
    files = {name: (directory / name).stat().st_size for name in listed if (directory / name).is_file()}
    constants: dict[tuple[str, ...], int] = {}
    for entry in manifest.graphs.values():
        graph = onnx.load(str(directory / entry.file), load_external_data=False).graph
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {kv.key: kv.value for kv in tensor.external_data}
                constants[("external", info["location"], info.get("offset", "0"))] = int(info["length"])
            else:
                constants[("embedded", tensor.name)] = len(onnx.numpy_helper.to_array(tensor).tobytes())
    tensors = load_file(str(directory / manifest.params.file))
    norm = sum(
        v.nbytes
        for k, v in tensors.items()
        if not k.startswith((FISHER_PREFIX, ANCHOR_PREFIX)) and k != manifest.source_feature_mean
    )
    weights = sum(constants.values()) + norm
    total = sum(files.values())
    return {"files": files, "weights": weights, "total": total, "ratio": total / weights if weights else float("nan")}


def size_report(path: str | Path, manifest: Manifest | None = None) -> str:
    """``artifact_sizes`` as text lines."""
    manifest = manifest or read_manifest(path)
    sizes = artifact_sizes(path, manifest)
    lines = ["  sizes        " + ", ".join(f"{name} {_mb(n)}" for name, n in sizes["files"].items())]
    lines.append(
        f"               total {_mb(sizes['total'])} for {_mb(sizes['weights'])} of float32 weights and norm "
        f"parameters: {sizes['ratio']:.2f}x"
    )
    if manifest.weights is None:  # derived backward kernels count as weights here: the ratio reads low
        lines.append("               weights embedded in each graph (an older export): re-export to store them once")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def integrity_problems(path: str | Path, manifest: Manifest | None = None) -> list[str]:
    return check_hashes(path, manifest or read_manifest(path))


def trt_lint_artifact(path: str | Path) -> tuple[bool, str]:
    import onnx

    from edgetta.runtime.lint import lint_model

    manifest = read_manifest(path)
    ok = True
    lines = ["TensorRT lint:"]
    for which, entry in manifest.graphs.items():
        report = lint_model(onnx.load(str(Path(path) / entry.file), load_external_data=False))
        ok = ok and report.ok
        lines.append(f"  {which}: {'ok' if report.ok else 'FAILED'}")
        lines += [f"    error: {e}" for e in report.errors] + [f"    warning: {w}" for w in report.warnings]
    return ok, "\n".join(lines)
