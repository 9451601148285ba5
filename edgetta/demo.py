"""``edgetta demo``: the main job on the bundled default, torch-free.

A Fashion-MNIST stream passes through a changing environment (clean, several corruptions at high
severity, clean again). The bundled BatchNorm model runs frozen and with an adapted recipe behind
safety rails, side by side; the demo prints a per-phase accuracy table and writes a PNG plot of
rolling accuracy and rail events, plus JSON results.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgetta.runtime.adapter import Adapter
from edgetta.runtime.config import RuntimeConfig, load_config, preset_names
from edgetta.streams import ArraySource, Collector, Progress, plural, prepare_output_dir, run_stream

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
DEFAULT_RECIPES = ("frozen", "demo")
DEMO_RECIPE = {
    # The EATA preset with Adam (the CIFAR-style setting that suits a small model), Fisher anchoring from
    # the artifact's calibration, the collapse guard, and the label-shift guard every batch-statistics preset
    # carries; BN statistics are the test batch's (bn_alpha = 1) unless the guard distrusts a batch.
    "preset": "eata",
    "method_args": {"optimizer": "adam", "lr": 0.001, "e0_fraction": 0.4, "eps": 0.4},
    "rails": [
        "nonfinite_guard",
        "label_shift_guard",
        {"name": "fisher_anchor", "beta": 1.0},
        {"name": "collapse_guard", "threshold": 0.2, "max_class_fraction": 0.95},
    ],
}
PLOT_MISSING = "demo.png skipped: pip install 'edgetta[plot]'"


def asset_path(name: str) -> Path:
    return Path(str(resources.files("edgetta.assets") / name))


class DemoStream(ArraySource):
    """The bundled stream: Fashion-MNIST test images through phases; the phase id is the domain, so
    batches never straddle a phase boundary (as a camera sees one scene at a time)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, phase: np.ndarray, phase_names: list[str]) -> None:
        super().__init__(x, y, phase, name="demo")
        self.phase_names = phase_names

    @property
    def phase(self) -> np.ndarray:
        assert self.domain is not None
        return self.domain

    @classmethod
    def load(cls, path: Path | None = None, limit_per_phase: int | None = None) -> DemoStream:
        with np.load(path or asset_path("demo_stream.npz"), allow_pickle=False) as data:
            images, labels, phase = data["images"], data["labels"], data["phase"]
            names = [str(n) for n in data["phase_names"]]
        if limit_per_phase:
            keep = np.concatenate([np.flatnonzero(phase == p)[:limit_per_phase] for p in range(len(names))])
            images, labels, phase = images[keep], labels[keep], phase[keep]
        x = ((images.astype(np.float32) / 255.0 - FMNIST_MEAN) / FMNIST_STD)[:, None]
        return cls(x, labels, phase, names)


@dataclass
class RecipeRun:
    name: str
    correct: np.ndarray
    event_batches: dict[str, list[int]] = field(default_factory=dict)  # kind -> first sample of each batch
    totals: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def recipe_config(name: str, batch_size: int) -> RuntimeConfig:
    """``demo`` (the recipe above) or a bundled preset, else a method with its own defaults."""
    if name == "demo":
        return load_config(batch_size=batch_size, name="demo", **DEMO_RECIPE)
    if name in preset_names():
        return load_config(preset=name, batch_size=batch_size)
    return load_config(method=name, batch_size=batch_size)


def run_recipe(
    name: str, artifact: Path, stream: DemoStream, batch_size: int, progress: Progress | None = None
) -> RecipeRun:
    adapter = Adapter(artifact, recipe_config(name, batch_size))
    collector = Collector()
    if progress is not None:
        progress.label = f"demo {name}"
    summary = run_stream(adapter, stream, [collector], batch_size=batch_size, progress=progress)
    totals = {
        "processed": summary.processed,
        "skipped": summary.skipped,
        "updates": summary.updates,
        "forward_passes": summary.forward_passes,
        "backward_passes": summary.backward_passes,
        "resets": summary.resets,
    }
    return RecipeRun(name, collector.correct(), collector.event_indices(), totals, summary.seconds)


def phase_table(stream: DemoStream, runs: list[RecipeRun]) -> str:
    header = f"{'phase':<16}" + "".join(f"{r.name:>10}" for r in runs)
    lines = [header, "-" * len(header)]
    for p, name in enumerate(stream.phase_names):
        mask = stream.phase == p
        lines.append(f"{name:<16}" + "".join(f"{100 * r.correct[mask].mean():>9.1f}%" for r in runs))
    lines.append("-" * len(header))
    lines.append(f"{'all':<16}" + "".join(f"{100 * r.correct.mean():>9.1f}%" for r in runs))
    return "\n".join(lines)


def _pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib (the ``plot`` extra) is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(stream: DemoStream, runs: list[RecipeRun], path: Path, window: int = 64) -> bool:
    """Rolling accuracy and rail events as a PNG; False (nothing written) without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    kernel = np.ones(window) / window
    for run in runs:
        rolling = np.convolve(run.correct.astype(float), kernel, mode="valid")
        ax.plot(
            np.arange(window - 1, len(run.correct)),
            100 * rolling,
            label=f"{run.name} ({100 * run.correct.mean():.1f}%)",
        )
    for p, name in enumerate(stream.phase_names):
        idx = np.flatnonzero(stream.phase == p)
        ax.axvspan(idx[0], idx[-1], color="grey" if p % 2 else "white", alpha=0.08)
        ax.text((idx[0] + idx[-1]) / 2, 2, name, ha="center", va="bottom", fontsize=8)
    markers = {
        "gate": ("|", "tab:orange"),
        "reset": ("v", "tab:red"),
        "skip": ("x", "tab:purple"),
        "restore": (".", "tab:green"),
        "clip": ("^", "tab:brown"),
    }
    for run in runs:
        for kind, batches in run.event_batches.items():
            marker, color = markers.get(kind, ("o", "black"))
            ax.scatter(
                batches,
                [101 + 2 * list(markers).index(kind) if kind in markers else 111] * len(batches),
                marker=marker,
                color=color,
                s=14,
                label=f"{run.name}: {kind} ({len(batches)})",
            )
    ax.set_ylim(0, 115)
    ax.set_xlabel("sample index in stream")
    ax.set_ylabel(f"accuracy, rolling {window} (%)")
    ax.set_title("edgetta demo: Fashion-MNIST through a changing environment")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def run_demo(
    out_dir: str | Path = "edgetta-demo",
    recipes: tuple[str, ...] = DEFAULT_RECIPES,
    batch_size: int = 64,
    limit_per_phase: int | None = None,
    artifact: str | Path | None = None,
) -> dict[str, Any]:
    out = prepare_output_dir(out_dir)
    stream = DemoStream.load(limit_per_phase=limit_per_phase)
    artifact_path = Path(artifact) if artifact else asset_path("fmnist_resnet_bn")
    print(f"edgetta demo: {len(stream.x)} Fashion-MNIST test images, phases: {' -> '.join(stream.phase_names)}")
    print(f"model: {artifact_path.name} (bundled, exported BatchNorm ResNet); recipes: {', '.join(recipes)}\n")
    progress = Progress(len(stream.x) * len(recipes), "demo")
    try:
        runs = [run_recipe(name, artifact_path, stream, batch_size, progress) for name in recipes]
    finally:
        progress.close()
    table = phase_table(stream, runs)
    print(table)
    for run in runs:
        totals = run.totals
        events = ", ".join(f"{k} {len(v)}" for k, v in sorted(run.event_batches.items())) or "none"
        print(
            f"\n{run.name}: {plural(totals['updates'], 'update')}, "
            f"{plural(totals['backward_passes'], 'backward pass')}, {plural(totals['resets'], 'reset')}, "
            f"events {events}, {run.seconds:.1f} s"
        )
    plotted = plot(stream, runs, out / "demo.png")
    results = {
        "phases": stream.phase_names,
        "recipes": {
            run.name: {
                "accuracy": float(run.correct.mean()),
                "per_phase": {
                    n: float(run.correct[stream.phase == p].mean()) for p, n in enumerate(stream.phase_names)
                },
                "totals": run.totals,
                "events": {k: len(v) for k, v in run.event_batches.items()},
                "seconds": round(run.seconds, 2),
            }
            for run in runs
        },
    }
    (out / "demo.json").write_text(json.dumps(results, indent=2) + "\n")
    if plotted:
        print(f"\nwrote {out / 'demo.png'} and {out / 'demo.json'}")
    else:
        print(f"\nwrote {out / 'demo.json'}")
        print(PLOT_MISSING, file=sys.stderr)
    return results
