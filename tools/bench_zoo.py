"""Export a zoo of real architectures nobody here wrote and record what it costs, one model at a time.

    tools/install_zoo_deps.sh                      # torchvision's model code, once (see docs/export.md)
    nice -n 10 python tools/bench_zoo.py [--models tv_resnet18,...] [--timeout 1200] [--out docs/zoo.json]

Per model (random weights; a few train-mode forwards give BatchNorm non-trivial running statistics): export
time, artifact size and float32 weight size, the exporter's parity reports at ``bn_alpha`` 0 and 1 (against a
float64 torch reference), the TensorRT lint of both graphs (edgetta.runtime.lint) and the time of one runtime
Tent step (``Adapter.process``) against one ``frozen`` step on the same batch. Each model runs in its own
subprocess with a timeout and an address-space limit; docs/zoo.json is rewritten after every model, so a
partial run keeps what it measured. ``--table`` prints the Markdown table of the JSON for docs/export.md.

torchvision: the registry's torchvision wheels are CUDA builds whose C extension cannot load next to the CPU
torch; the model code is pure Python. ``load_torchvision`` puts the folder the install script filled on
``sys.path`` and declares the two operator schemas torchvision's import registers fake kernels for (``nms``,
``qnms``) when the extension did not load, so ``import torchvision`` succeeds; detection ops stay unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEPS_ENV = "EDGETTA_ZOO_DEPS"
DEFAULT_DEPS = Path.home() / ".cache" / "edgetta" / "zoo-deps"
BATCH = 4
MEMORY_LIMIT_GB = 10

# name -> (library, constructor, keyword arguments, input shape without batch)
ZOO: dict[str, tuple[str, str, dict[str, Any], tuple[int, ...]]] = {
    "tv_resnet18": ("torchvision", "resnet18", {}, (3, 64, 64)),
    "tv_mobilenet_v3_small": ("torchvision", "mobilenet_v3_small", {}, (3, 64, 64)),
    "tv_mobilenet_v2": ("torchvision", "mobilenet_v2", {}, (3, 64, 64)),
    "tv_regnet_y_400mf": ("torchvision", "regnet_y_400mf", {}, (3, 64, 64)),
    "tv_efficientnet_b0": ("torchvision", "efficientnet_b0", {}, (3, 64, 64)),
    "tv_resnet50": ("torchvision", "resnet50", {}, (3, 64, 64)),
    "tv_convnext_tiny": ("torchvision", "convnext_tiny", {}, (3, 64, 64)),
    "tv_swin_t": ("torchvision", "swin_t", {}, (3, 64, 64)),
    "tv_vit_b_16": ("torchvision", "vit_b_16", {"image_size": 32}, (3, 32, 32)),
    "timm_resnet18": ("timm", "resnet18", {}, (3, 64, 64)),
    "timm_mobilenetv3_small_100": ("timm", "mobilenetv3_small_100", {}, (3, 64, 64)),
    "timm_efficientnet_b0": ("timm", "efficientnet_b0", {}, (3, 64, 64)),
    "timm_convnext_atto": ("timm", "convnext_atto", {}, (3, 64, 64)),
    "timm_vit_tiny_patch16": ("timm", "vit_tiny_patch16_224", {"img_size": 32}, (3, 32, 32)),
    # a published sleep network with its shipped weights (pip install --no-deps qlsleeps; docs/export.md)
    "sleepyco": ("spec", "tools/sleepyco_spec.py:sleepyco", {}, (1, 3000)),
}


# Diagnosed blockers of models that fail (shown in the table next to the error).
BLOCKERS: dict[str, str] = {
    "tv_convnext_tiny": "torchvision's `LayerNorm2d` (an nn.LayerNorm subclass whose forward permutes to "
    "channels-last, normalises and permutes back; the downsampling layers) is swapped for the exporter's "
    "plain-op LayerNorm twin "
    "(edgetta/export/norms.py `rewrite_norms` matches it by isinstance), which drops the permutes and normalises "
    "the last (spatial) axis: 'size of tensor a (16) must match the size of tensor b (96)'",
    "tv_swin_t": "the shifted-window mask is built by in-place scalar writes (`attn_mask[h0:h1, w0:w1] = count` in "
    "torchvision's `shifted_window_attention`); each Python scalar becomes a real 0-d constant (`aten.lift_fresh`, "
    "decomposed to `aten.alias`) that the exporter's symbolic trace rejects because its FakeTensorMode "
    "(edgetta/export/trace.py `_fake_inputs`) does not allow non-fake inputs: 'Please convert all Tensors to "
    "FakeTensors first ... Found in aten.alias.default(tensor(0.))'",
    "timm_efficientnet_b0": "timm's `BatchNormAct2d` (an nn.BatchNorm2d subclass whose forward applies the "
    "normalisation, then its own activation and drop modules) is swapped for the exporter's plain-op BatchNorm twin "
    "(edgetta/export/norms.py `rewrite_norms` matches it by isinstance), which drops the activation; the export's "
    "parity check catches it and refuses the artifact (logits 3.4e3 off at bn_alpha 0)",
    "timm_mobilenetv3_small_100": "timm's `BatchNormAct2d`: as timm_efficientnet_b0 (logits 9.1e2 off at bn_alpha 0)",
    "timm_convnext_atto": "timm's `LayerNorm2d` (an nn.LayerNorm subclass normalising channels-first): as "
    "tv_convnext_tiny",
}


# -- torchvision without its C extension ------------------------------------------------------------
_TV_LIBRARY: Any = None  # keeps the operator declarations alive


def load_torchvision(deps: Path | None = None) -> Any:
    """Import torchvision (from ``deps``, $EDGETTA_ZOO_DEPS or ~/.cache/edgetta/zoo-deps when not importable
    as it is) whether or not its C extension loads. Raises ImportError with the install command if absent."""
    global _TV_LIBRARY
    import importlib.util

    import torch

    folder = Path(deps or os.environ.get(DEPS_ENV) or DEFAULT_DEPS)
    if importlib.util.find_spec("torchvision") is None and (folder / "torchvision").is_dir():
        sys.path.insert(0, str(folder))
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError(f"torchvision is not installed; run tools/install_zoo_deps.sh (installs into {folder})")
    extension = Path(spec.origin).parent / "_C.so"
    try:
        torch.ops.load_library(str(extension))
    except (OSError, RuntimeError):  # a CUDA build next to a CPU torch: declare what its import registers
        if _TV_LIBRARY is None and not hasattr(torch.ops.torchvision, "nms"):
            _TV_LIBRARY = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                _TV_LIBRARY.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torchvision


def build(name: str, seed: int = 0):
    """The zoo model ``name`` with random weights and BN statistics from a few train-mode forwards, in eval."""
    import torch

    library, constructor, kwargs, shape = ZOO[name]
    torch.manual_seed(seed)
    if library == "spec":  # shipped weights and statistics: used as they are
        from edgetta.export import resolve_spec

        return resolve_spec(str(ROOT / constructor)).eval()
    load_torchvision()
    if library == "torchvision":
        import torchvision

        model = getattr(torchvision.models, constructor)(**kwargs)
    else:
        import timm

        model = timm.create_model(constructor, pretrained=False, **kwargs)
    with torch.no_grad():  # zero-initialised heads (torchvision's ViT) give zero logits and gradients: nothing to check
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(0.0, 0.02)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape) * 1.2 + 0.1)
    return model.eval()


# -- one model ----------------------------------------------------------------------------------------
def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def _timed_pair(artifact: Path, shape: tuple[int, ...], reps: int) -> dict[str, float]:
    """One runtime Tent step and one frozen step on the same batch, interleaved; medians in ms."""
    from edgetta.runtime.adapter import Adapter
    from edgetta.runtime.config import load_config

    x = np.random.default_rng(1).standard_normal((BATCH, *shape)).astype(np.float32)
    options = {"batch_size": BATCH, "min_batch": BATCH, "engine": {"intra_op_threads": 1}}  # every call updates
    tent = Adapter(artifact, load_config(None, method="tent", **options))
    frozen = Adapter(artifact, load_config(None, method="frozen", **options))
    if not tent.process(x).updated:
        raise RuntimeError("the Tent step did not update; the timing would be of a forward pass")
    tent_ms, frozen_ms = [], []
    for _ in range(max(1, reps // 3)):
        tent_ms.append(_median_ms(lambda: tent.process(x), 3))
        frozen_ms.append(_median_ms(lambda: frozen.process(x), 3))
    t, f = float(np.median(tent_ms)), float(np.median(frozen_ms))
    return {"tent_ms": round(t, 2), "frozen_ms": round(f, 2), "tent/frozen": round(t / f, 2)}


def run_one(name: str, work: Path, reps: int) -> dict[str, Any]:
    """Export ``name`` into ``work`` and measure it; the record that goes into docs/zoo.json."""
    import torch

    from edgetta.export import export_model
    from edgetta.runtime.inspect import trt_lint_artifact

    torch.set_num_threads(1)
    library, constructor, kwargs, shape = ZOO[name]
    record: dict[str, Any] = {"model": name, "library": library, "constructor": constructor, "kwargs": kwargs}
    record["input"] = [BATCH, *shape]
    model = build(name)
    weights = sum(t.numel() * 4 for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point())
    record["weights_mb"] = round(weights / 1e6, 2)
    out = work / name
    started = time.perf_counter()
    manifest = export_model(model, torch.randn(BATCH, *shape), out)
    record["export_s"] = round(time.perf_counter() - started, 1)
    record["artifact_mb"] = round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6, 2)
    record["norm_layers"] = len(manifest.get("norm_layers", []))
    record["exporter"] = manifest.get("exporter")
    record["files"] = sorted(p.name for p in out.iterdir() if p.is_file())
    record["parity"] = (manifest.get("verification") or {}).get("results")
    ok, text = trt_lint_artifact(out)
    record["trt_lint"] = {"ok": ok, "errors": [line.strip() for line in text.splitlines() if "error:" in line][:5]}
    record.update(_timed_pair(out, shape, reps))
    record["status"] = "ok"
    return record


# -- the driver ---------------------------------------------------------------------------------------
def _limit_memory() -> None:
    limit = MEMORY_LIMIT_GB * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_child(name: str, work: Path, reps: int, timeout: float) -> dict[str, Any]:
    """``name`` in a subprocess (niced by the caller, memory-limited, killed after ``timeout`` seconds)."""
    cmd = [sys.executable, __file__, "--child", name, "--work", str(work), "--reps", str(reps)]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "timeout", "error": f"not done after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    (work / f"{name}.stderr").write_text(done.stderr)
    return {
        "model": name,
        "status": "failed",
        "seconds": round(time.perf_counter() - started, 1),
        "error": summarize_error(done.stderr) or f"exit status {done.returncode}",
    }


def summarize_error(stderr: str) -> str:
    """The exception line and the last frames in edgetta and in the model's own code, from a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip() and "Warning" not in line]
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    ours = [lines[i].strip() for i in frames if "edgetta" in lines[i]][-1:]
    model = [lines[i].strip() for i in frames if "torchvision" in lines[i] or "timm" in lines[i]][-1:]
    errors = [line.strip() for line in lines if not line.startswith(" ") and ("Error" in line or "Exception" in line)]
    text = " | ".join(errors[-1:] + ours + model)
    text = text.replace(str(ROOT) + "/", "")  # no machine paths in the record
    return re.sub(r'File "[^"]*/site-packages/', 'File "', text)


def write(path: Path, records: dict[str, Any]) -> None:
    data = {
        "command": "nice -n 10 python tools/bench_zoo.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared",
        "versions": _versions(),
        "batch": BATCH,
        "models": records,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for module in ("torch", "onnxruntime", "onnx"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            pass
    return out


def _fmt_parity(results: list[dict[str, Any]] | None, alpha: float) -> str:
    for r in results or []:
        if float(r["bn_alpha"]) == alpha:
            logits = max(r["logits_infer"], r["logits_adapt"])
            if logits == 0 and r["grad_max"] == 0:  # e.g. a zero-initialised head: nothing was compared
                return "0 / 0 (trivial: zero logits)"
            return f"{logits:.0e} / {r['grad_max']:.0e}"
    return "-"


def table(records: dict[str, Any]) -> str:
    """Markdown table of the records (for docs/export.md, "Model zoo")."""
    head = (
        "| model | input | export s | artifact MB | weights MB | parity a=0 (logits / grads) | parity a=1 "
        "| TRT lint | Tent / frozen step |\n|---|---|---:|---:|---:|---|---|---|---:|"
    )
    rows = [head]
    for name, r in records.items():
        if r.get("status") != "ok":
            known = BLOCKERS.get(name) if r.get("status") == "failed" else None
            why = known or " ".join(str(r.get("error", "")).split())[-200:]
            rows.append(f"| {name} | | | | | **{r.get('status')}**: {why} | | | |")
            continue
        lint = "ok" if r["trt_lint"]["ok"] else "errors"
        shape = "x".join(str(d) for d in r["input"])
        rows.append(
            f"| {name} | {shape} | {r['export_s']} | {r['artifact_mb']} | {r['weights_mb']} "
            f"| {_fmt_parity(r['parity'], 0.0)} | {_fmt_parity(r['parity'], 1.0)} | {lint} | {r['tent/frozen']} |"
        )
    return "\n".join(rows)


TABLE_START, TABLE_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


def write_table(doc: Path, records: dict[str, Any]) -> None:
    """Replace the table between the zoo-table markers of ``doc`` (docs/export.md)."""
    text = doc.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise SystemExit(f"{doc} has no {TABLE_START} ... {TABLE_END} section")
    head, rest = text.split(TABLE_START, 1)
    doc.write_text(f"{head}{TABLE_START}\n{table(records)}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ZOO), help="comma-separated names from ZOO")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "zoo.json")
    p.add_argument("--work", type=Path, default=None, help="artifact folder (default: a temporary one)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per model")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--keep", action="store_true", help="keep models already in --out with status ok")
    p.add_argument("--table", action="store_true", help="print the Markdown table of --out and exit")
    p.add_argument("--doc", type=Path, help="with --table: also write it into this Markdown file's zoo-table section")
    p.add_argument("--retime", action="store_true", help="time again the models of --out found in --work")
    p.add_argument("--add", type=Path, help="add the records of this JSON file (one record or a list) to --out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        record = run_one(args.child, args.work, args.reps)
        print(json.dumps(record))
        return 0
    if args.add:
        data = json.loads(args.out.read_text()) if args.out.exists() else {"models": {}}
        added = json.loads(args.add.read_text())
        for record in added if isinstance(added, list) else [added]:
            data["models"][record["model"]] = record
        write(args.out, data["models"])
        return 0
    if args.retime:
        data = json.loads(args.out.read_text())
        for name, record in data["models"].items():
            if record.get("status") == "ok" and (args.work / name / "manifest.json").exists():
                record.update(_timed_pair(args.work / name, tuple(record["input"][1:]), args.reps))
        write(args.out, data["models"])
        return 0
    if args.table:
        records = json.loads(args.out.read_text())["models"]
        if args.doc:
            write_table(args.doc, records)
        print(table(records))
        return 0
    records: dict[str, Any] = {}
    if args.keep and args.out.exists():
        records = {k: v for k, v in json.loads(args.out.read_text())["models"].items() if v.get("status") == "ok"}
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetta-zoo-"))
    for name in args.models.split(","):
        if name not in ZOO:
            p.error(f"unknown model {name!r}; known: {', '.join(ZOO)}")
        if name in records:
            continue
        print(f"[zoo] {name} ...", file=sys.stderr, flush=True)
        records[name] = run_child(name, work, args.reps, args.timeout)
        print(f"[zoo] {name}: {json.dumps(records[name])[:400]}", file=sys.stderr, flush=True)
        write(args.out, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
