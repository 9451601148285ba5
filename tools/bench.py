#!/usr/bin/env python
"""Fashion-MNIST-C test-time adaptation benchmark: frozen / bn / lame / tent / eata / sar.

Protocols (docs/benchmarks.md):

* episodic: each of the 15 corruptions at each severity is its own stream; the adapter is reset to the
  source model before every corruption;
* continual: all 15 corruptions at severity 5 one after another, never reset;
* forgetting: right after the continual stream, a clean held-out slice is processed by the adapted
  model (no reset; the runtime keeps adapting online, as a deployed device would);
* wild (SAR): all corruptions mixed in one shuffled stream, batch size 1 on a shorter mixed stream, and
  a label-sorted stream (online label shift).

The corrupted images are a fixed, seeded subset of ``--per-domain`` test images; the same images are
corrupted by every corruption. The clean held-out slice is disjoint from that subset.

Example::

    python tools/bench.py --models resnet_bn,resnet_gn --per-domain 100 --severities 5,3 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgetta.data import load_fashion_mnist, to_model_input  # noqa: E402
from edgetta.data.corruptions import CORRUPTIONS, corrupt  # noqa: E402
from edgetta.runtime.adapter import Adapter  # noqa: E402
from edgetta.runtime.config import RuntimeConfig, load_config  # noqa: E402
from edgetta.streams import ArraySource, Collector, run_stream  # noqa: E402

METHODS: tuple[str, ...] = ("frozen", "bn", "lame", "tent", "eata", "sar")
# Extra variant run on the wild settings only: Tent behind the label-shift rails.
WILD_VARIANT = "tent+rails"
WILD_SETTINGS: tuple[str, ...] = ("mixed", "bs1", "label_sorted", "forgetting")

# CIFAR-style settings for small models (the bundled presets are the ImageNet ones: SGD lr 2.5e-4).
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "frozen": {"method_args": {}, "rails": []},
    "bn": {"method_args": {"bn_alpha": 1.0, "bn_momentum": 0.0}, "rails": []},
    "lame": {"method_args": {"affinity": "knn", "knn": 5, "lam": 1.0, "max_iter": 100}, "rails": []},
    "tent": {"method_args": {"optimizer": "adam", "lr": 1e-3}, "rails": ["nonfinite_guard"]},
    "eata": {
        "method_args": {"optimizer": "adam", "lr": 1e-3, "e0_fraction": 0.4, "eps": 0.4},
        "rails": ["nonfinite_guard", {"name": "fisher_anchor", "beta": 1.0}],
    },
    "sar": {
        "method_args": {"optimizer": "adam", "lr": 1e-3, "e0_fraction": 0.4, "rho": 0.05},
        "rails": ["nonfinite_guard", {"name": "collapse_guard", "ema_momentum": 0.9, "threshold": 0.2}],
    },
    WILD_VARIANT: {
        "method": "tent",
        "method_args": {"optimizer": "adam", "lr": 1e-3},
        "rails": [
            "nonfinite_guard",
            {"name": "diversity_gate", "max_class_fraction": 0.5, "min_batch": 8},
            {"name": "collapse_guard", "ema_momentum": 0.9, "threshold": 0.2},
        ],
    },
}

# Methods that normalise with test-batch statistics get the label-shift guard, as the shipped presets do
# (``--no-label-shift-guard`` measures them without it; docs/label_shift.md).
LABEL_SHIFT_GUARD = "label_shift_guard"
GUARDED = ("bn", "tent", "eata", "sar", WILD_VARIANT)
for _name in GUARDED:
    _rails = METHOD_SETTINGS[_name]["rails"]
    _rails.insert(1 if _rails[:1] == ["nonfinite_guard"] else 0, LABEL_SHIFT_GUARD)


def drop_label_shift_guard() -> None:
    """The settings without the guard (for before/after tables)."""
    for name in GUARDED:
        METHOD_SETTINGS[name]["rails"] = [r for r in METHOD_SETTINGS[name]["rails"] if r != LABEL_SHIFT_GUARD]


# Already exported artifacts (with a Fisher anchor), reused instead of exporting again.
KNOWN_ARTIFACTS: dict[str, Path] = {
    "resnet_bn": REPO / "edgetta" / "assets" / "fmnist_resnet_bn",
    "resnet_gn": REPO / "tests" / "assets" / "fmnist_resnet_gn",
}


# ------------------------------------------------------------------------------------------ setup


def make_config(method: str, batch_size: int, seed: int = 0) -> RuntimeConfig:
    """The bundled preset of the runtime method, with the settings above merged in (method_args key by key)."""
    spec = METHOD_SETTINGS[method]
    base = spec.get("method", method)
    return load_config(
        preset=base,
        name=method,
        batch_size=batch_size,
        method_args=dict(spec["method_args"]),
        rails=list(spec["rails"]),
        seed=seed,
    )


def artifact_for(model: str, work: Path, calib_samples: int = 2000, root: str | None = None) -> Path:
    """The artifact directory of ``model``: a bundled one, else exported (and cached) under ``work``."""
    if model in KNOWN_ARTIFACTS and (KNOWN_ARTIFACTS[model] / "manifest.json").is_file():
        return KNOWN_ARTIFACTS[model]
    out = work / f"fmnist_{model}"
    if (out / "manifest.json").is_file():
        return out
    import torch  # only needed to export a new model

    from edgetta.export import export_model
    from edgetta.zoo.models import FAMILIES

    sidecar = REPO / "models" / f"fmnist_{model}.json"
    meta = json.loads(sidecar.read_text())
    net = FAMILIES[meta["model"]](**meta["kwargs"])
    net.load_state_dict(torch.load(sidecar.with_suffix(".pt"), weights_only=True))
    net.eval()
    train_x, _ = load_fashion_mnist("train", root)
    pick = np.random.default_rng(0).choice(len(train_x), size=calib_samples, replace=False)
    calib = to_model_input(train_x[np.sort(pick)])
    from edgetta.data.fashion_mnist import CLASS_NAMES  # type: ignore[attr-defined]

    export_model(net, torch.from_numpy(calib[:4]), out, calib=calib, class_names=list(CLASS_NAMES))
    return out


def subset(n: int, size: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Sorted seeded random indices of ``size`` items out of ``n`` (never from ``exclude``)."""
    pool = np.arange(n) if exclude is None else np.setdiff1d(np.arange(n), exclude)
    size = min(size, len(pool))
    return np.sort(np.random.default_rng(seed).choice(pool, size=size, replace=False))


# ------------------------------------------------------------------------------------------ running


def predict_stream(adapter: Adapter, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Predictions for ``x`` processed online by the one loop in batches of ``batch_size`` (-1 where skipped)."""
    collector = Collector()
    run_stream(adapter, ArraySource(x, name="bench"), [collector], batch_size=batch_size)
    return collector.preds()


def error(preds: np.ndarray, y: np.ndarray) -> float:
    return float(100.0 * np.mean(preds != y)) if len(y) else float("nan")


def counts(adapter: Adapter, before: dict[str, int] | None = None) -> dict[str, int]:
    now = {k: int(adapter.totals.get(k, 0)) for k in ("backward_passes", "updates", "forward_passes")}
    now["resets"] = int(adapter.event_counts.get("reset", 0))
    if before:
        now = {k: v - before.get(k, 0) for k, v in now.items()}
    return now


def run_benchmark(
    artifacts: dict[str, str | Path],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    per_domain: int = 100,
    severities: Sequence[int] = (5, 3),
    methods: Sequence[str] = METHODS,
    corruptions: Sequence[str] = CORRUPTIONS,
    wild: Sequence[str] = WILD_SETTINGS,
    wild_variant: bool = True,
    batch_size: int = 64,
    bs1_samples: int = 300,
    label_sorted_samples: int = 1000,
    label_sorted_corruption: str = "gaussian_noise",
    clean_samples: int = 500,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every protocol for every artifact and method; returns the JSON-able result dict."""
    t_start = time.time()
    corruptions = list(corruptions)
    methods = list(methods)
    idx = subset(len(images), per_domain, seed)
    clean_idx = subset(len(images), clean_samples, seed + 1, exclude=idx)
    y = labels[idx].astype(np.int64)
    data: dict[int, dict[str, np.ndarray]] = {}
    for sev in sorted(set(severities) | {5}):
        data[sev] = {name: to_model_input(corrupt(images[idx], name, sev, seed)) for name in corruptions}
    log(f"corrupted {len(corruptions)} x {len(data)} severities x {len(idx)} images in {time.time() - t_start:.0f} s")
    # Wild streams (severity 5).
    rng = np.random.default_rng([seed, 1003])
    mix_x = np.concatenate([data[5][n] for n in corruptions])
    mix_y = np.tile(y, len(corruptions))
    order = rng.permutation(len(mix_y))
    mix_x, mix_y = mix_x[order], mix_y[order]
    bs1_x, bs1_y = mix_x[:bs1_samples], mix_y[:bs1_samples]
    ls_idx = subset(len(images), label_sorted_samples, seed + 2)
    ls_order = np.argsort(labels[ls_idx], kind="stable")
    ls_idx = ls_idx[ls_order]
    ls_x = to_model_input(corrupt(images[ls_idx], label_sorted_corruption, 5, seed))
    ls_y = labels[ls_idx].astype(np.int64)
    clean_x, clean_y = to_model_input(images[clean_idx]), labels[clean_idx].astype(np.int64)

    results: dict[str, Any] = {
        "meta": {
            "dataset": "Fashion-MNIST-C (our 28x28 severity table, docs/corruptions.md)",
            "per_domain": int(len(idx)),
            "severities": [int(s) for s in severities],
            "corruptions": corruptions,
            "methods": methods,
            "batch_size": batch_size,
            "bs1_samples": int(len(bs1_y)),
            "mixed_samples": int(len(mix_y)),
            "label_sorted_samples": int(len(ls_y)),
            "label_sorted_corruption": label_sorted_corruption,
            "clean_samples": int(len(clean_y)),
            "seed": seed,
            "settings": {m: METHOD_SETTINGS[m] for m in [*methods, *([WILD_VARIANT] if wild_variant else [])]},
        },
        "models": {},
    }
    wild_methods = [*methods, *([WILD_VARIANT] if wild_variant and wild else [])]
    for model, art in artifacts.items():
        res: dict[str, Any] = {"artifact": str(art), "episodic": {}, "continual": {}, "wild": {s: {} for s in wild}}
        for method in wild_methods:
            t0 = time.time()
            if method in methods:
                adapter = Adapter(art, make_config(method, batch_size, seed))
                for sev in severities:
                    per, passes = {}, {"backward_passes": 0, "updates": 0}
                    for name in corruptions:
                        adapter.reset("new domain")
                        before = counts(adapter)
                        per[name] = error(predict_stream(adapter, data[sev][name], batch_size), y)
                        for k in passes:
                            passes[k] += counts(adapter, before)[k]
                    res["episodic"].setdefault(str(sev), {})[method] = {
                        "mean": float(np.mean(list(per.values()))),
                        "per_corruption": per,
                        **passes,
                    }
                # Continual at severity 5, then forgetting on clean data without a reset.
                adapter.reset("continual start")
                before = counts(adapter)
                per = {name: error(predict_stream(adapter, data[5][name], batch_size), y) for name in corruptions}
                res["continual"][method] = {
                    "mean": float(np.mean(list(per.values()))),
                    "per_corruption": per,
                    **counts(adapter, before),
                }
                if "forgetting" in wild:
                    res["wild"]["forgetting"][method] = {
                        "error": error(predict_stream(adapter, clean_x, batch_size), clean_y),
                        **counts(adapter, before),
                    }
            elif "forgetting" in wild:
                adapter = Adapter(art, make_config(method, batch_size, seed))
                before = counts(adapter)
                for name in corruptions:
                    predict_stream(adapter, data[5][name], batch_size)
                res["wild"]["forgetting"][method] = {
                    "error": error(predict_stream(adapter, clean_x, batch_size), clean_y),
                    **counts(adapter, before),
                }
            for setting, xs, ys, bs in (
                ("mixed", mix_x, mix_y, batch_size),
                ("label_sorted", ls_x, ls_y, batch_size),
                ("bs1", bs1_x, bs1_y, 1),
            ):
                if setting not in wild:
                    continue
                adapter = Adapter(art, make_config(method, bs, seed))
                res["wild"][setting][method] = {"error": error(predict_stream(adapter, xs, bs), ys), **counts(adapter)}
            res.setdefault("seconds", {})[method] = round(time.time() - t0, 1)
            log(f"[{model}] {method}: {time.time() - t0:.0f} s (total {time.time() - t_start:.0f} s)")
        results["models"][model] = res
    results["meta"]["seconds"] = round(time.time() - t_start, 1)
    return results


# ------------------------------------------------------------------------------------------ report

WILD_TITLES = {
    "mixed": "mixed (15 corruptions shuffled, sev. 5)",
    "bs1": "batch size 1 (mixed, sev. 5)",
    "label_sorted": "label-sorted (sev. 5)",
    "forgetting": "clean after continual (forgetting)",
}
SHORT = {
    "gaussian_noise": "gauss",
    "shot_noise": "shot",
    "impulse_noise": "impul",
    "defocus_blur": "defoc",
    "glass_blur": "glass",
    "motion_blur": "motn",
    "zoom_blur": "zoom",
    "snow": "snow",
    "frost": "frost",
    "fog": "fog",
    "brightness": "brit",
    "contrast": "contr",
    "elastic_transform": "elast",
    "pixelate": "pixel",
    "jpeg_compression": "jpeg",
}


def _fmt(v: float) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.1f}"


def episodic_table(entry: dict[str, Any], names: Sequence[str]) -> list[str]:
    head = "| method | mean | " + " | ".join(SHORT.get(n, n) for n in names) + " | backward passes |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    for method, r in entry.items():
        cells = " | ".join(_fmt(r["per_corruption"][n]) for n in names)
        lines.append(f"| {method} | **{_fmt(r['mean'])}** | {cells} | {r['backward_passes']} |")
    return lines


def wild_table(res: dict[str, Any], settings: Sequence[str]) -> list[str]:
    methods: list[str] = []
    for s in settings:
        methods += [m for m in res["wild"].get(s, {}) if m not in methods]
    lines = [
        "| method | " + " | ".join(WILD_TITLES[s] for s in settings) + " |",
        "|" + "---|" * (len(settings) + 1),
    ]
    for m in methods:
        cells = []
        for s in settings:
            r = res["wild"].get(s, {}).get(m)
            cells.append("-" if r is None else f"{_fmt(r['error'])} ({r['backward_passes']} bw, {r['resets']} resets)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(results: dict[str, Any], command: str = "", discussion: str = "") -> str:
    meta = results["meta"]
    names = meta["corruptions"]
    lines = [
        "# Benchmarks: Fashion-MNIST-C test-time adaptation",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Machine: {meta.get('machine', 'unknown')}; total run time {meta.get('seconds', '?')} s.",
        "",
        "Data: **Fashion-MNIST-C** built with our own 28x28 severity table (docs/corruptions.md), not CIFAR-10-C or "
        "ImageNet-C numbers. The same fixed, seeded subset of "
        f"**{meta['per_domain']} test images** is corrupted by each of the {len(names)} corruptions "
        f"(seed {meta['seed']}); mixed stream {meta['mixed_samples']} samples; batch-size-1 stream the first "
        f"{meta['bs1_samples']} samples of the mixed stream; label-sorted stream {meta['label_sorted_samples']} "
        f"test images with {meta['label_sorted_corruption']} severity 5 sorted by label; clean held-out slice "
        f"{meta['clean_samples']} test images disjoint from the corrupted subset. Batch size {meta['batch_size']} "
        "unless stated. Errors are top-1 error in %; one seed.",
        "",
        "## Settings",
        "",
        "| method | runtime method | method_args | rails |",
        "|---|---|---|---|",
    ]
    for m, s in meta["settings"].items():
        lines.append(f"| {m} | {s.get('method', m)} | `{json.dumps(s['method_args'])}` | `{json.dumps(s['rails'])}` |")
    lines += [
        "",
        "Adam lr 1e-3 (the CIFAR-style setting; the bundled presets' SGD lr 2.5e-4 is the ImageNet one and barely "
        "moves a small model). EATA: E0 = 0.4 ln C, redundancy eps = 0.4, Fisher anchor beta = 1 (CIFAR-10 values; "
        "the Fisher comes from 2000 training images at export). SAR: E0 = 0.4 ln C, rho = 0.05, collapse guard "
        "(reset when the entropy EMA drops below 0.2 or one class fills the last 256 predictions). At batch size 1 "
        "BN models use the runtime's sliding window (16 samples) for every method except frozen and lame. "
        f"`{WILD_VARIANT}` (wild settings only) is Tent behind the diversity gate and the collapse guard. "
        "Forgetting: after the continual severity-5 stream, without reset, the clean slice is processed online "
        "by the adapted model (it keeps adapting, as a device would).",
        "",
    ]
    if discussion:
        lines += ["<!-- discussion -->", discussion.strip(), "<!-- /discussion -->", ""]
    for model, res in results["models"].items():
        lines += [f"## {model}", "", f"Artifact: `{Path(res['artifact']).name}`.", ""]
        for sev, entry in res["episodic"].items():
            lines += [f"### Episodic, severity {sev} (error %, reset before each corruption)", ""]
            lines += episodic_table(entry, names) + [""]
        if res["continual"]:
            lines += ["### Continual, severity 5 (all 15 in sequence, no reset)", ""]
            lines += episodic_table(res["continual"], names) + [""]
        settings = [s for s in WILD_SETTINGS if res["wild"].get(s)]
        if settings:
            lines += ["### Wild settings (error %, backward passes, resets)", ""]
            lines += wild_table(res, settings) + [""]
    lines += ["## Plots", ""]
    for png in meta.get("plots", []):
        lines += [f"![{Path(png).stem}]({png})", ""]
    lines += ["Raw numbers: `docs/benchmarks.json`.", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Bar charts of the episodic and wild results; none (with a note) when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("plots skipped: pip install 'edgetta[plot]'", file=sys.stderr)
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    models = list(results["models"])
    names = results["meta"]["corruptions"]
    paths = []
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 3.2 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        entry = results["models"][model]["episodic"].get("5", {})
        width = 0.8 / max(1, len(entry))
        for i, (method, r) in enumerate(entry.items()):
            xs = np.arange(len(names)) + i * width
            ax.bar(xs, [r["per_corruption"][n] for n in names], width, label=f"{method} ({r['mean']:.1f})")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels([SHORT.get(n, n) for n in names], fontsize=8)
        ax.set_ylabel("error %")
        ax.set_title(f"{model}: Fashion-MNIST-C severity 5, episodic (mean in legend)")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    paths.append(out_dir / "episodic_sev5.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    settings = [s for s in WILD_SETTINGS if any(results["models"][m]["wild"].get(s) for m in models)]
    if settings:
        fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 3.6), squeeze=False)
        for ax, model in zip(axes[0], models):
            wild = results["models"][model]["wild"]
            methods = list(dict.fromkeys(m for s in settings for m in wild.get(s, {})))
            width = 0.8 / max(1, len(methods))
            for i, method in enumerate(methods):
                vals = [wild.get(s, {}).get(method, {}).get("error", np.nan) for s in settings]
                ax.bar(np.arange(len(settings)) + i * width, vals, width, label=method)
            ax.set_xticks(np.arange(len(settings)) + 0.4 - width / 2)
            ax.set_xticklabels(settings, fontsize=8)
            ax.set_ylabel("error %")
            ax.set_title(f"{model}: wild settings")
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths.append(out_dir / "wild.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


def _keep_discussion(path: Path) -> str:
    if not path.is_file():
        return ""
    text = path.read_text()
    start, end = text.find("<!-- discussion -->"), text.find("<!-- /discussion -->")
    return text[start + len("<!-- discussion -->") : end].strip() if 0 <= start < end else ""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet_bn,resnet_gn", help="comma list (models/fmnist_<name>.pt)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--per-domain", type=int, default=100, help="test images per corruption (fixed subset)")
    p.add_argument("--severities", default="5,3")
    p.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    p.add_argument("--wild", default=",".join(WILD_SETTINGS), help="wild settings to run ('' for none)")
    p.add_argument("--no-wild-variant", action="store_true", help=f"skip the {WILD_VARIANT} variant")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bs1-samples", type=int, default=300)
    p.add_argument("--label-sorted-samples", type=int, default=1000)
    p.add_argument("--clean-samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-label-shift-guard", action="store_true", help="run bn/tent/eata/sar without the guard")
    p.add_argument("--data-root", default=None)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "edgetta" / "bench")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=None, help="default: --out with .json")
    p.add_argument("--plots", type=Path, default=None, help="default: <out dir>/benchmarks/")
    args = p.parse_args(argv)
    if args.no_label_shift_guard:
        drop_label_shift_guard()

    command = "python tools/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    models = [m for m in args.models.split(",") if m]
    artifacts = {m: artifact_for(m, args.work, root=args.data_root) for m in models}
    images, labels = load_fashion_mnist("test", args.data_root)

    def log(msg: str) -> None:
        print(msg, flush=True)

    results = run_benchmark(
        artifacts,
        images,
        labels,
        per_domain=args.per_domain,
        severities=[int(s) for s in args.severities.split(",") if s],
        methods=[m for m in args.methods.split(",") if m],
        corruptions=[c for c in args.corruptions.split(",") if c],
        wild=[w for w in args.wild.split(",") if w],
        wild_variant=not args.no_wild_variant,
        batch_size=args.batch_size,
        bs1_samples=args.bs1_samples,
        label_sorted_samples=args.label_sorted_samples,
        clean_samples=args.clean_samples,
        seed=args.seed,
        log=log,
    )
    results["meta"]["command"] = command
    results["meta"]["machine"] = (
        f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), no GPU, shared with other jobs"
    )
    out: Path = args.out
    plot_dir = args.plots or out.parent / "benchmarks"
    pngs = plot(results, plot_dir)
    results["meta"]["plots"] = [os.path.relpath(pth, out.parent) for pth in pngs]
    json_path = args.json or out.with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    out.write_text(render_markdown(results, command, _keep_discussion(out)))
    log(f"wrote {out}, {json_path}, {', '.join(map(str, pngs))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
