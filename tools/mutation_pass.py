#!/usr/bin/env python
"""Mutation pass: break one feature at a time in a scratch copy of HEAD and record which tests turn red.

Each mutation replaces one exact snippet of source (it must match once). The suite runs against the copy
(PYTHONPATH puts it first) so the working tree is never touched. Writes a Markdown table.

    python tools/mutation_pass.py --out docs/mutations.md [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_runtime.py",
    "tests/test_safety.py",
    "tests/test_runtime_parity.py",
    "tests/test_optim.py",
    "tests/test_kernels.py",
    "tests/test_lint.py",
    "tests/test_cli.py",
    "tests/test_streams.py",
]


def noop(path: str, signature: str) -> tuple[str, str, str]:
    """Make the method whose ``def`` line is ``signature`` return at once."""
    return path, signature, signature + "\n        return"


MUTATIONS: dict[str, tuple[str, str, str]] = {
    "optimizer step is a no-op": noop(
        "edgetta/runtime/optim.py",
        "    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:",
    ),
    "entropy_gate off": noop(
        "edgetta/safety/gates.py",
        "    def before_update(self, ctx: StepContext) -> None:\n        e0 = self.threshold(ctx.num_classes)",
    ),
    "batch_entropy_gate off": noop(
        "edgetta/safety/gates.py",
        "    def before_update(self, ctx: StepContext) -> None:\n        mean = batch_mean_entropy(ctx)",
    ),
    "diversity_gate off": noop(
        "edgetta/safety/gates.py",
        "    def before_update(self, ctx: StepContext) -> None:\n        preds = np.argmax(ctx.logits, axis=1)",
    ),
    "fisher_anchor off": noop(
        "edgetta/safety/fisher_anchor.py", "    def on_gradients(self, ctx: StepContext) -> None:"
    ),
    "collapse_guard off": noop("edgetta/safety/collapse.py", "    def after_update(self, ctx: StepContext) -> None:"),
    "ema_reset off": noop("edgetta/safety/ema_reset.py", "    def after_update(self, ctx: StepContext) -> None:"),
    "stochastic_restore off": noop(
        "edgetta/safety/restore.py", "    def after_update(self, ctx: StepContext) -> None:"
    ),
    "periodic_reset off": noop("edgetta/safety/periodic.py", "    def after_update(self, ctx: StepContext) -> None:"),
    "nonfinite_guard off (gradients)": noop(
        "edgetta/safety/nonfinite.py", "    def on_gradients(self, ctx: StepContext) -> None:"
    ),
    "nonfinite_guard off (proposal)": noop(
        "edgetta/safety/nonfinite.py", "    def after_update(self, ctx: StepContext) -> None:"
    ),
    "trust_region off": noop("edgetta/safety/trust_region.py", "    def after_update(self, ctx: StepContext) -> None:"),
    "rail order reversed": (
        "edgetta/safety/pipeline.py",
        "sorted(rails, key=rail_order_key)",
        "sorted(rails, key=rail_order_key, reverse=True)",
    ),
    "rail order = config order": ("edgetta/safety/pipeline.py", "sorted(rails, key=rail_order_key)", "list(rails)"),
    "EATA reliability filter off": (
        "edgetta/runtime/methods/eata.py",
        "reliable = np.flatnonzero(ctx.entropy < e0)",
        "reliable = np.arange(len(ctx.entropy))",
    ),
    "EATA redundancy filter off": (
        "edgetta/runtime/methods/eata.py",
        "distinct = self.redundancy.mask(ctx.probs[reliable])",
        "distinct = np.ones(reliable.size, dtype=bool)",
    ),
    "SAR reliability filter off": (
        "edgetta/runtime/methods/sar.py",
        "keep = ctx.entropy < self.e0(ctx.num_classes)",
        "keep = np.isfinite(ctx.entropy)",
    ),
    "SAR sharpness step off": ("edgetta/runtime/methods/sar.py", "scale = self.rho / (norm + 1e-12)", "scale = 0.0"),
    "sliding window off": (
        "edgetta/runtime/adapter.py",
        "small = self.window is not None and n < self.config.min_batch",
        "small = False",
    ),
    "rails on bn never consulted": (
        "edgetta/runtime/methods/forward_only.py",
        "            offered |= {Target.BATCH, Target.PROPOSAL, Target.RESET}",
        "            offered |= set()",
    ),
    "sample weights ignored on the one-call path": (
        "edgetta/runtime/methods/base.py",
        "        if self._uniform is None or not np.array_equal(weights, self._uniform):",
        "        if self._uniform is None:",
    ),
    "failed restore keeps partial state": (
        "edgetta/runtime/adapter.py",
        "        except Exception as exc:\n            self._build()",
        "        except Exception as exc:\n            pass",
    ),
    "rail checkpoint config not checked": (
        "edgetta/safety/pipeline.py",
        '            if isinstance(entry, dict) and entry.get("config") != rail.spec:',
        "            if False:",
    ),
    "integer input not preprocessed": (
        "edgetta/runtime/inputs.py",
        "            x, preprocessed = self._apply(x), True",
        "            x, preprocessed = x.astype(np.float32), True",
    ),
    "TensorRT lint always ok": ("edgetta/runtime/lint.py", "    return report\n", "    return LintReport()\n"),
}


def run(name: str, change: tuple[str, str, str], tests: list[str]) -> tuple[str, list[str]]:
    path, old, new = change
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        # A clean snapshot of the committed tree (HEAD), so edits in progress never leak into a run.
        copy.mkdir()
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
        target = copy / path
        text = target.read_text()
        if text.count(old) != 1:
            return "NOT APPLIED (snippet not found once)", []
        target.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(copy), "EDGETTA_CACHE_DIR": str(Path(tmp) / "cache")}
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *[t for t in tests if (copy / t).exists()],
        ]
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
        failed = sorted(set(re.findall(r"^FAILED (\S+?)(?: - .*)?$", done.stdout, re.M)))
        return ("red" if failed else "GREEN (survived)"), failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/mutations.md")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--tests", nargs="*", default=TESTS)
    args = parser.parse_args(argv)
    rows = []
    for name, change in MUTATIONS.items():
        if args.only and name not in args.only:
            continue
        status, failed = run(name, change, args.tests)
        short = [f.split("::")[-1] for f in failed]
        print(f"{name}: {status} {len(failed)} red: {', '.join(short[:6])}", flush=True)
        rows.append(f"| {name} | `{change[0]}` | {status} | {len(failed)} | {', '.join(short) or '-'} |")
    table = ["| mutation | file | result | red tests | which |", "|---|---|---|---|---|", *rows]
    Path(args.out).write_text(
        "# Mutation pass\n\nCommand: `python tools/mutation_pass.py`\n\n" + "\n".join(table) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
