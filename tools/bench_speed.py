"""Speed and memory of the adaptation step, measured side by side in one process run.

    python tools/bench_speed.py [--models resnet20,sleep] [--reps 30] [--out docs/speed.md]

Per model and batch size (ResNet-20: 64 and 1; sleep CNN: 32 and 1) these cases are timed:

1. ``plain``: plain ONNX Runtime inference of the same model exported the ordinary way (torch.onnx.export
   in eval mode; ORT folds BN into the convolutions) -- the floor;
2. ``bn``: forward-only BN adaptation through ``OrtEngine.infer(x, params, bn_alpha=1)``;
3. ``adapt``: the bare adapt-graph call ``OrtEngine.adapt`` (one Tent step's graph call) and ``tent``: the
   full runtime Tent step ``Adapter.process`` (validation, graph call, rails, SGD update); at batch 1 also
   ``tent_window``: what a batch-1 stream runs by default (BN statistics over a sliding window of 16);
4. ``torch_tent``: an eager PyTorch Tent step (train-mode BN, entropy loss, backward, SGD on the BN
   affine parameters only), ``torch.set_num_threads`` equal to the ORT thread count (``torch_infer``: eval);
5. peak RSS of a torch-free replay subprocess (``Adapter.process`` over N batches) versus a subprocess
   running the torch Tent loop on the same batches;
6. ``--stream`` (on by default for ResNet-20): the whole-stream view a user gets -- ``edgetta replay`` (the
   same ``replay`` function the CLI runs, with the bundled ``frozen`` and ``tent`` presets and the bare
   ``tent`` method; a new Adapter per run, its loop seconds as the summary reports them, so lazily built
   sessions and folds count) over 4096 samples at batch 64,
   against a plain ONNX Runtime loop and an eager torch Tent loop over the same batches, interleaved, in
   seconds per stream (median of ``--stream-rounds``).

Timing is block-interleaved: each round runs every case in turn (one untimed call, then a few timed ones),
so load from other jobs on a shared machine hits all cases alike; medians are reported. Neither runtime
spin-waits by default (ORT ``session.intra_op.allow_spinning=0`` for every session, torch
``OMP_WAIT_POLICY=PASSIVE``): on a loaded machine spinning worker threads make both runtimes several times
slower and their ratio meaningless; ``--spin`` measures with both runtimes' defaults instead.

The engine's cases run twice: ``*_before`` with ``EngineOptions(optimize=False)`` (the exported graphs
as they are) and without suffix (the default engine: rewritten graphs). Exported artifacts are cached
under ``--work``. Writes Markdown (``--out``; only the generated section between its markers is
replaced) and JSON (same name, ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS: dict[str, dict[str, Any]] = {
    "resnet20": {"factory": "resnet_bn", "shape": (3, 32, 32), "batches": (64, 1), "label": "ResNet-20 (3x32x32)"},
    "sleep": {"factory": "sleep_cnn", "shape": (1, 3000), "batches": (32, 1), "label": "1-D sleep CNN (1x3000)"},
}
SESSION_CONFIG: dict[str, str] = {}  # ORT session config for every session (set from --spin)
TENT_LR = 0.00025  # the bundled tent preset (SGD, momentum 0.9)
TENT_MOMENTUM = 0.9
WINDOW = 16


# -- artifacts -------------------------------------------------------------------------------------
def build_model(name: str):
    """The zoo model with non-trivial BN running statistics (a few train-mode forwards), in eval mode."""
    import torch

    from edgetta.zoo import models

    spec = MODELS[name]
    torch.manual_seed(0)
    model = getattr(models, spec["factory"])()
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, *spec["shape"]) * 1.5 + 0.3)
    return model.eval()


def ensure_artifacts(name: str, work: Path) -> Path:
    """Export (once) the edgetta artifact, the plain ONNX model and the torch weights of ``name``."""
    import torch

    folder = work / name
    if (folder / "artifact" / "manifest.json").exists() and (folder / "plain.onnx").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(name)
    torch.save(model.state_dict(), folder / "model.pt")
    shape = MODELS[name]["shape"]
    from edgetta.export import export_model

    print(f"[{name}] exporting the artifact (about a minute for ResNet-20)", file=sys.stderr, flush=True)
    export_model(model, torch.randn(8, *shape), folder / "artifact")
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (torch.randn(4, *shape),),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=["input"],
            output_names=["logits"],
            external_data=False,
            verbose=False,
        )
    program.save(str(folder / "plain.onnx"))
    return folder


def load_torch_model(name: str, folder: Path):
    import torch

    from edgetta.zoo import models

    model = getattr(models, MODELS[name]["factory"])()
    model.load_state_dict(torch.load(folder / "model.pt"))
    return model


# -- cases -----------------------------------------------------------------------------------------
def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    for key, value in SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def make_adapter(artifact, threads: int, optimize: bool, batch: int, window: bool):
    from edgetta.runtime.adapter import Adapter
    from edgetta.runtime.config import load_config

    # every call its own batch (min_batch 1), or batch-1 calls through the 16-row sliding window
    sizes = {"window": WINDOW} if window else {"min_batch": min(batch, 16)}
    config = load_config(None, method="tent", batch_size=batch, engine=engine_config(threads, optimize), **sizes)
    return Adapter(artifact, config)


def engine_config(threads: int, optimize: bool = True) -> dict[str, Any]:
    """The same thread count and spinning policy as the plain session (the engine's own default is no spinning)."""
    config = dict(SESSION_CONFIG) or {"session.intra_op.allow_spinning": "1"}
    return {"intra_op_threads": threads, "optimize": optimize, "extra": {"session_config": config}}


class TorchTent:
    """Eager Tent (Wang et al. 2021): train-mode BN, mean entropy, SGD on the BN affine parameters."""

    def __init__(self, model) -> None:
        import torch

        self.model = model.train()
        params = []
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.track_running_stats = False
                module.running_mean = module.running_var = None
                params += [module.weight, module.bias]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.SGD(params, lr=TENT_LR, momentum=TENT_MOMENTUM)

    def step(self, x) -> None:
        logits = self.model(x)
        loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def timed(cases: dict[str, Callable[[], Any]], reps: int, block: int = 3) -> dict[str, dict[str, float]]:
    """Block-interleaved timing: each round runs every case in turn, one untimed call then ``block`` timed
    calls (so one runtime's spinning worker threads never overlap the next case's first call); rounds
    repeat until ``reps`` timings per case. Median, quartiles and minimum in ms."""
    for fn in cases.values():
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    while min(len(v) for v in samples.values()) < reps:
        for name, fn in cases.items():
            fn()
            for _ in range(min(block, reps - len(samples[name]))):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, values in samples.items():
        arr = np.asarray(values)
        out[name] = {
            "median_ms": float(np.median(arr)),
            "p25_ms": float(np.percentile(arr, 25)),
            "p75_ms": float(np.percentile(arr, 75)),
            "min_ms": float(arr.min()),
        }
    return out


def bench_batch(name: str, folder: Path, batch: int, reps: int, threads: int, before: bool) -> dict[str, Any]:
    import torch

    from edgetta.contract import load_artifact
    from edgetta.engines import EngineOptions, OrtEngine
    from edgetta.runtime.adapter import Adapter
    from edgetta.runtime.config import load_config

    torch.set_num_threads(threads)
    shape = MODELS[name]["shape"]
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    weights, zeros = np.full(batch, 1.0 / batch, np.float32), np.zeros(batch, np.float32)
    artifact = load_artifact(folder / "artifact")
    params = artifact.params
    plain = ort_session(folder / "plain.onnx", threads)
    cases: dict[str, Callable[[], Any]] = {"plain": lambda: plain.run(None, {"input": x})}
    variants = [("", True)] + ([("_before", False)] if before else [])
    stream = [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(WINDOW)]
    for suffix, optimize in variants:
        engine = OrtEngine(artifact, EngineOptions(**engine_config(threads, optimize)))
        adapter = make_adapter(artifact, threads, optimize, batch, window=False)
        frozen_config = load_config(None, method="frozen", batch_size=batch, engine=engine_config(threads, optimize))
        frozen = Adapter(artifact, frozen_config)
        cases[f"frozen{suffix}"] = lambda a=frozen: a.process(x)
        cases[f"bn{suffix}"] = lambda e=engine: e.infer(x, params, 1.0)
        cases[f"adapt{suffix}"] = lambda e=engine: e.adapt(x, params, 1.0, weights, zeros)
        cases[f"tent{suffix}"] = lambda a=adapter: a.process(x)
        if batch == 1:
            windowed = make_adapter(artifact, threads, optimize, batch, window=True)
            cases[f"tent_window{suffix}"] = lambda a=windowed: [a.process(s) for s in stream]
    model = load_torch_model(name, folder)
    tent = TorchTent(load_torch_model(name, folder))
    model.eval()
    xt = torch.from_numpy(x)

    def torch_infer() -> None:
        with torch.no_grad():
            model(xt)

    cases["torch_infer"] = torch_infer
    cases["torch_tent"] = lambda: tent.step(xt)
    times = timed(cases, reps)
    for key in [k for k in times if k.startswith("tent_window")]:
        times[key] = {k: v / WINDOW for k, v in times[key].items()}  # per call of a 16-call cycle
    med = {k: v["median_ms"] for k, v in times.items()}
    ratios = {}
    for suffix, _ in variants:
        ratios[f"frozen{suffix}/plain"] = med[f"frozen{suffix}"] / med["plain"]
        ratios[f"bn{suffix}/plain"] = med[f"bn{suffix}"] / med["plain"]
        ratios[f"adapt{suffix}/plain"] = med[f"adapt{suffix}"] / med["plain"]
        ratios[f"tent{suffix}/plain"] = med[f"tent{suffix}"] / med["plain"]
        ratios[f"torch_tent/tent{suffix}"] = med["torch_tent"] / med[f"tent{suffix}"]
        ratios[f"torch_tent/adapt{suffix}"] = med["torch_tent"] / med[f"adapt{suffix}"]
    ratios["torch_infer/plain"] = med["torch_infer"] / med["plain"]
    report = None
    variant = OrtEngine(artifact, EngineOptions(intra_op_threads=threads)).variant("adapt", 1.0)
    if variant.report is not None:
        report = {"nodes_exported": variant.report["nodes_before"], "nodes_rewritten": variant.report["nodes_after"]}
    return {"batch": batch, "times": times, "ratios": ratios, "adapt_graph": report}


# -- memory ----------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def replay_batches(name: str, batch: int, count: int):
    """The same ``count`` batches in every memory subprocess, generated one at a time (no dataset held in memory,
    so the peak is the runtime's own)."""
    for i in range(count):
        yield np.random.default_rng(7 + i).standard_normal((batch, *MODELS[name]["shape"])).astype(np.float32)


def child_ort(name: str, folder: Path, batch: int, count: int, threads: int, cold: bool = False) -> dict[str, Any]:
    import tempfile

    from edgetta.runtime.adapter import Adapter
    from edgetta.runtime.config import load_config

    engine = engine_config(threads)
    if cold:  # an empty graph cache: the first start (onnx import, rewrite, check against the export)
        engine["extra"]["graph_cache"] = tempfile.mkdtemp(prefix="edgetta-cold-")
    config = load_config(None, method="tent", batch_size=batch, engine=engine)
    adapter = Adapter(folder / "artifact", config)
    for x in replay_batches(name, batch, count):
        adapter.process(x)
    return {
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
        "onnx_imported": "onnx" in sys.modules,
        "updates": adapter.totals["updates"],
    }


def child_torch(name: str, folder: Path, batch: int, count: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    tent = TorchTent(load_torch_model(name, folder))
    for x in replay_batches(name, batch, count):
        tent.step(torch.from_numpy(x))
    return {"peak_rss_mb": peak_rss_mb(), "torch_imported": True}


def measure_rss(name: str, folder: Path, batch: int, count: int, threads: int) -> dict[str, Any]:
    """Peak RSS of a torch-free replay subprocess and of a torch Tent subprocess on the same batches. The replay
    finds the rewritten graphs in the engine's graph cache (filled by the timing runs), as a device does from its
    second start on."""
    out: dict[str, Any] = {}
    for kind in ("ort", "ort_cold", "torch"):
        cmd = [sys.executable, __file__, "--child", kind, "--models", name, "--work", str(folder.parent)]
        cmd += ["--batches", str(batch), "--rss-batches", str(count), "--threads", str(threads)]
        cmd += ["--spin"] if not SESSION_CONFIG else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    out["ratio_ort/torch"] = out["ort"]["peak_rss_mb"] / out["torch"]["peak_rss_mb"]
    out.update(batch=batch, batches=count)
    return out


# -- report ----------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "ort_spinning": not SESSION_CONFIG,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


ROWS = [
    ("plain", "plain ORT inference (BN folded) -- the floor"),
    ("frozen", "`frozen` step, `Adapter.process` (folded)"),
    ("bn", "`bn` forward-only, `engine.infer` (bn_alpha=1)"),
    ("adapt", "bare `engine.adapt` (one Tent graph call)"),
    ("tent", "runtime Tent step, `Adapter.process`"),
    ("tent_window", "runtime Tent step, window 16 (per call)"),
    ("torch_infer", "eager torch inference (eval)"),
    ("torch_tent", "eager torch Tent step"),
]


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


# -- the stream a user replays ----------------------------------------------------------------------
STREAM_CASES = [
    ("plain", "plain ORT inference loop (BN folded) -- the floor"),
    ("frozen", "`edgetta replay --method frozen` (preset)"),
    ("frozen_unfolded", "the same, folding off (`engine.extra.fold: false`) -- before"),
    ("tent", "`edgetta replay --method tent` (preset: Tent + its rails)"),
    ("tent_bare", "`edgetta replay` with the bare `tent` method (no rails)"),
    ("torch_tent", "eager torch Tent loop"),
]


def bench_stream(name: str, folder: Path, threads: int, samples: int, batch: int, rounds: int) -> dict[str, Any]:
    """Seconds per stream of ``samples`` inputs at ``batch``: replay (as ``edgetta replay`` runs it) against a
    plain ORT loop and an eager torch Tent loop on the same inputs; rounds interleave the cases."""
    import tempfile

    import torch

    from edgetta.runtime.adapter import Adapter
    from edgetta.runtime.config import load_config
    from edgetta.streams import NpzSource, replay

    torch.set_num_threads(threads)
    x = np.random.default_rng(11).standard_normal((samples, *MODELS[name]["shape"])).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="edgetta-stream-"))
    np.savez(work / "stream.npz", x=x)
    plain = ort_session(folder / "plain.onnx", threads)
    engine = engine_config(threads)

    def run_plain() -> float:
        start = time.perf_counter()
        for i in range(0, samples, batch):
            plain.run(None, {"input": x[i : i + batch]})
        return time.perf_counter() - start

    def run_replay(method: str, preset: bool, fold: bool = True) -> Callable[[], float]:
        def run() -> float:
            choice = {"preset": method} if preset else {"method": method}
            options = engine if fold else {**engine, "extra": {**engine["extra"], "fold": False}}
            config = load_config(None, batch_size=batch, engine=options, **choice)
            adapter = Adapter(folder / "artifact", config)
            summary = replay(adapter, NpzSource(work / "stream.npz"), work / "out", episodic=config.episodic)
            return float(summary.seconds)  # the loop seconds the replay summary reports

        return run

    def run_torch() -> float:
        tent = TorchTent(load_torch_model(name, folder))
        xt = torch.from_numpy(x)
        start = time.perf_counter()
        for i in range(0, samples, batch):
            tent.step(xt[i : i + batch])
        return time.perf_counter() - start

    cases = {
        "plain": run_plain,
        "frozen": run_replay("frozen", True),
        "frozen_unfolded": run_replay("frozen", True, fold=False),
        "tent": run_replay("tent", True),
        "tent_bare": run_replay("tent", False),
        "torch_tent": run_torch,
    }
    for fn in cases.values():  # warm-up: graph cache, allocator
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for key, fn in cases.items():
            seconds[key].append(fn())
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    ratios = {
        "frozen/plain": med["frozen"] / med["plain"],
        "frozen_unfolded/plain": med["frozen_unfolded"] / med["plain"],
        "tent/plain": med["tent"] / med["plain"],
        "tent_bare/plain": med["tent_bare"] / med["plain"],
        "torch_tent/tent": med["torch_tent"] / med["tent"],
        "torch_tent/tent_bare": med["torch_tent"] / med["tent_bare"],
    }
    return {"samples": samples, "batch": batch, "rounds": rounds, "seconds": seconds, "median_s": med, "ratios": ratios}


def stream_markdown(name: str, stream: dict[str, Any]) -> list[str]:
    med, r = stream["median_s"], stream["ratios"]
    lines = [
        f"## {MODELS[name]['label']}: a replayed stream of {stream['samples']} samples at batch {stream['batch']}",
        "",
        f"Seconds per stream, median of {stream['rounds']} interleaved rounds; replays: the loop seconds of the "
        "replay summary with a new Adapter per run (sessions built on first use and folds count).",
        "",
        "| case | s per stream | x plain |",
        "|---|---:|---:|",
    ]
    for key, label in STREAM_CASES:
        lines.append(f"| {label} | {med[key]:.2f} | {med[key] / med['plain']:.2f} |")
    lines += [
        "",
        "| ratio | value | goal |",
        "|---|---:|---|",
        f"| frozen replay / plain | {r['frozen/plain']:.2f} (unfolded: {r['frozen_unfolded/plain']:.2f}) | <= 1.10 |",
        f"| Tent replay (preset) / plain | {r['tent/plain']:.2f} | <= 2.2 |",
        f"| Tent replay (bare method) / plain | {r['tent_bare/plain']:.2f} | <= 2.2 |",
        f"| eager torch Tent / Tent replay (preset) | {r['torch_tent/tent']:.2f} | >= 1.5 |",
        f"| eager torch Tent / Tent replay (bare method) | {r['torch_tent/tent_bare']:.2f} | >= 1.5 |",
        "",
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The generated section of the report (between the START/END markers)."""
    m = results["machine"]
    spin = "on" if m["ort_spinning"] else "off (`session.intra_op.allow_spinning=0`)"
    spin += f", torch `OMP_WAIT_POLICY={m['omp_wait_policy']}`"
    lines = [
        f"Command: `{results['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads for ORT and for torch, ORT thread spinning "
        f"{spin}; load average {', '.join(f'{v:.1f}' for v in m['load_average'])} at the start and "
        f"{', '.join(f'{v:.1f}' for v in m.get('load_average_end', []))} at the end (a shared machine: absolute "
        "times are noisy; ratios come from cases measured side by side, interleaved, in one process run).",
        f"Versions: Python {m['python']}, numpy {m['numpy']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}.",
        f'Median of {results["reps"]} timed calls per case (block-interleaved, after warm-up). "before" = '
        '`EngineOptions(optimize=False)` (the exported graphs as they are); "after" = the default engine.',
        "",
    ]
    for name, model in results["models"].items():
        if model.get("stream"):
            lines += stream_markdown(name, model["stream"])
        for run in model["batches"]:
            b = run["batch"]
            t, r = run["times"], run["ratios"]
            lines += [f"## {MODELS[name]['label']}, batch {b}", ""]
            before = "bn_before" in t
            head = "| case | median ms (after) | x plain |" + (
                " median ms (before) | x plain (before) |" if before else ""
            )
            lines += [head, "|---|---:|---:|" + ("---:|---:|" if before else "")]
            for key, label in ROWS:
                if key not in t:
                    continue
                row = f"| {label} | {t[key]['median_ms']:.2f} | {t[key]['median_ms'] / t['plain']['median_ms']:.2f} |"
                if before:
                    if f"{key}_before" in t:
                        bt = t[f"{key}_before"]["median_ms"]
                        row += f" {bt:.2f} | {bt / t['plain']['median_ms']:.2f} |"
                    else:
                        row += " | |"
                lines.append(row)
            lines.append("")
            targets = [
                ("`frozen` step / plain", r["frozen/plain"], "<= 1.10"),
                ("`bn` / plain", r["bn/plain"], "<= 1.15"),
                ("adapt step (Adapter.process) / plain", r["tent/plain"], "<= 2.2"),
                ("bare engine.adapt / plain", r["adapt/plain"], "<= 2.2"),
                ("torch Tent / runtime Tent step", r["torch_tent/tent"], ">= 1.5 (b64), >= 3 (b1, sleep CNN)"),
                ("torch Tent / bare engine.adapt", r["torch_tent/adapt"], ">= 1.5"),
            ]
            lines += ["| ratio | after | before | target |", "|---|---:|---:|---|"]
            for label, value, target in targets:
                key = {
                    "`frozen` step / plain": "frozen_before/plain",
                    "`bn` / plain": "bn_before/plain",
                    "adapt step (Adapter.process) / plain": "tent_before/plain",
                    "bare engine.adapt / plain": "adapt_before/plain",
                    "torch Tent / runtime Tent step": "torch_tent/tent_before",
                    "torch Tent / bare engine.adapt": "torch_tent/adapt_before",
                }[label]
                old = f"{r[key]:.2f}" if key in r else ""
                lines.append(f"| {label} | {value:.2f} | {old} | {target} |")
            graph = run.get("adapt_graph")
            if graph:
                lines += [
                    "",
                    f"Adapt graph nodes: {graph['nodes_exported']} exported, {graph['nodes_rewritten']} rewritten.",
                ]
            lines.append("")
        rss = model.get("rss")
        if rss:
            lines += [
                f"Peak RSS, Tent over {rss['batches']} batches of {rss['batch']} ({MODELS[name]['label']}): torch-free "
                f"replay {rss['ort']['peak_rss_mb']:.0f} MiB (torch imported: {rss['ort']['torch_imported']}, onnx "
                f"imported: {rss['ort']['onnx_imported']}), torch Tent {rss['torch']['peak_rss_mb']:.0f} MiB: ratio "
                f"**{rss['ratio_ort/torch']:.2f}** (target <= 0.33). First start with an empty graph cache (onnx "
                f"import, rewrite, check against the export): {rss['ort_cold']['peak_rss_mb']:.0f} MiB, ratio "
                f"{rss['ort_cold']['peak_rss_mb'] / rss['torch']['peak_rss_mb']:.2f}.",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,sleep", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions per case (>= 20 recommended)")
    parser.add_argument("--out", default="docs/speed.md", help="Markdown report; JSON goes next to it")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "edgetta" / "bench"), help="artifact cache")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads = torch threads")
    parser.add_argument("--batches", default=None, help="override batch sizes, e.g. 64,1")
    parser.add_argument("--rss-batches", type=int, default=20, help="batches replayed by the memory subprocesses")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--no-before", action="store_true", help="skip the unoptimised engine (before) cases")
    parser.add_argument(
        "--spin", action="store_true", help="let ORT worker threads spin between ops (default: off, as on a shared CPU)"
    )
    parser.add_argument(
        "--stream",
        default="resnet20",
        help="models whose replayed stream is timed (comma-separated; 'none' for none); see case 6",
    )
    parser.add_argument("--stream-samples", type=int, default=4096)
    parser.add_argument("--stream-batch", type=int, default=64)
    parser.add_argument("--stream-rounds", type=int, default=3)
    parser.add_argument("--no-batches", action="store_true", help="only the stream cases (and RSS unless --no-rss)")
    parser.add_argument("--child", choices=("ort", "ort_cold", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.spin:
        # Neither runtime spin-waits: ORT's pool and torch's OpenMP threads (read when torch loads).
        SESSION_CONFIG["session.intra_op.allow_spinning"] = "0"
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    work = Path(args.work).expanduser()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.child:
        folder = work / names[0]
        batch = int(args.batches.split(",")[0]) if args.batches else MODELS[names[0]]["batches"][0]
        if args.child == "torch":
            result = child_torch(names[0], folder, batch, args.rss_batches, args.threads)
        else:
            result = child_ort(names[0], folder, batch, args.rss_batches, args.threads, cold=args.child == "ort_cold")
        print(json.dumps(result))
        return 0
    command = "python tools/bench_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {
        "command": command.strip(),
        "machine": machine_info(args.threads),
        "reps": args.reps,
        "models": {},
    }
    for name in names:
        folder = ensure_artifacts(name, work)
        batches = batch_sizes(args.batches, name)
        runs = []
        entry: dict[str, Any] = {"batches": runs}
        if name in args.stream.split(","):
            print(f"[{name}] stream of {args.stream_samples} samples", file=sys.stderr, flush=True)
            entry["stream"] = bench_stream(
                name, folder, args.threads, args.stream_samples, args.stream_batch, args.stream_rounds
            )
        for batch in [] if args.no_batches else batches:
            print(f"[{name}] batch {batch}: timing", file=sys.stderr, flush=True)
            runs.append(bench_batch(name, folder, batch, args.reps, args.threads, not args.no_before))
        if not args.no_rss:
            print(f"[{name}] peak RSS subprocesses", file=sys.stderr, flush=True)
            entry["rss"] = measure_rss(name, folder, batches[0], args.rss_batches, args.threads)
        results["models"][name] = entry
    results["machine"]["load_average_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(out, markdown(results))
    print(markdown(results))
    return 0


def batch_sizes(option: str | None, name: str) -> list[int]:
    """``--batches``: "64,1" for every model, or per model "resnet20:64,sleep:1" (a model not named: none)."""
    if not option:
        return list(MODELS[name]["batches"])
    if ":" not in option:
        return [int(b) for b in option.split(",")]
    return [int(b) for part in option.split(",") for m, _, b in [part.partition(":")] if m == name]


def write_report(out: Path, generated: str) -> None:
    """Replace the generated section of ``out`` (keeping hand-written text around it) or create the file."""
    section = f"{START}\n{generated}\n{END}"
    text = out.read_text() if out.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = f"# Speed and memory of the adaptation step\n\n{section}\n"
    out.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
