"""Train the compact sleep-staging network (edgetta.zoo.sleep) and export it as an edgetta artifact.

    python tools/train_sleep.py --data DIR --out artifacts/sleep_edf     # Sleep-EDF (SC*/ST* PSG + hypnogram)
    python tools/train_sleep.py --out edgetta/assets/sleep_tinysleepnet  # the synthetic cohort (default artifact)

With ``--data`` the nights are read with ``edgetta.sleep.sleepedf.read_night`` (channel ``--channel``,
100 Hz, 30 s epochs, wake trimmed to 30 min around sleep); without it a synthetic cohort of unshifted
subjects is generated (``edgetta.sleep.synth``) and the artifact is marked synthetic-trained in its
manifest and README. Inputs are z-scored per record with the same causal running z-score the runtime uses
(``edgetta.sleep.normalize``). Loss: cross-entropy with inverse-square-root class-frequency weights, Adam.
A few minutes on 2 CPU cores at the defaults; run it with ``nice``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetta.export import export_model  # noqa: E402
from edgetta.sleep.normalize import DEFAULT_MOMENTUM, zscore_record  # noqa: E402
from edgetta.sleep.stages import STAGES  # noqa: E402
from edgetta.zoo.sleep import TinySleepNet  # noqa: E402

Record = tuple[str, np.ndarray, np.ndarray]  # record id, z-scored epochs [n, 3000], labels [n]


def read_records(directory: Path, channel: str) -> list[Record]:
    """Every PSG/hypnogram pair under ``directory`` as z-scored epochs with labels (unscored epochs dropped)."""
    from edgetta.sleep.sleepedf import find_pairs, read_night

    records = []
    for pair in find_pairs(directory):
        night = read_night(pair.psg, pair.hypnogram, channel=channel)
        keep = night.labels >= 0
        records.append((night.record_id, zscore_record(night.eeg)[keep], night.labels[keep]))
    if not records:
        raise SystemExit(f"no PSG/hypnogram pairs found under {directory}")
    return records


def synthetic_records(subjects: int, seed: int, hours: float, workdir: Path) -> list[Record]:
    """A synthetic cohort of unshifted subjects, written as EDF+ and read back like real data."""
    from edgetta.sleep.synth import write_cohort

    write_cohort(workdir, subjects, seed=seed, shifts=None, hours=hours)
    return read_records(workdir, "EEG Fpz-Cz")


def class_weights(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels, minlength=len(STAGES)).astype(np.float64)
    weights = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def evaluate(model: TinySleepNet, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i : i + 512, None])).argmax(1) for i in range(0, len(x), 512)])
    return float((pred.numpy() == y).mean())


def train(
    records: list[Record], val: list[Record], *, epochs: int, minutes: float, seed: int, width: int, lr: float
) -> tuple[TinySleepNet, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = np.concatenate([r[1] for r in records]).astype(np.float32)
    y = np.concatenate([r[2] for r in records]).astype(np.int64)
    vx = np.concatenate([r[1] for r in val]).astype(np.float32) if val else x[:0]
    vy = np.concatenate([r[2] for r in val]).astype(np.int64) if val else y[:0]
    model = TinySleepNet(len(STAGES), width)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    weights = class_weights(y)
    started, history = time.perf_counter(), []
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            xb = x[idx] * rng.uniform(0.8, 1.25, (len(idx), 1)).astype(np.float32)  # residual gain variation
            xb = np.roll(xb, int(rng.integers(0, 3000)), axis=1)  # the stage does not depend on the phase
            loss = F.cross_entropy(model(torch.from_numpy(xb[:, None])), torch.from_numpy(y[idx]), weight=weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        sample = rng.choice(len(x), min(len(x), 2000), replace=False)
        entry = {"epoch": epoch + 1, "loss": round(total / len(x), 4)}
        entry["train_acc"] = round(evaluate(model, x[sample], y[sample]), 4)
        if len(vx):
            entry["val_acc"] = round(evaluate(model, vx, vy), 4)
        history.append(entry)
        print(json.dumps(entry), flush=True)
        if time.perf_counter() - started > minutes * 60:
            break
    return model.eval(), {"history": history, "seconds": round(time.perf_counter() - started, 1)}


README = """# sleep_tinysleepnet: a {kind}-trained sleep-staging artifact

Compact single-channel network (`edgetta.zoo.sleep.TinySleepNet`, width {width}, TinySleepNet-like encoder
with BatchNorm; a single-epoch classifier, so causal: stage t uses epoch t only). Input: one EEG channel,
30 s at 100 Hz ([N, 1, 3000]), z-scored per record with the causal running z-score (momentum {momentum});
classes W, N1, N2, N3, REM.

**Trained on {what}.** {caveat}

Made by `{command}` ({seconds} s). Training history and the cohort are in `manifest.json` under `training`.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a Sleep-EDF directory (PSG + hypnogram EDF pairs)")
    parser.add_argument("--channel", default="EEG Fpz-Cz")
    parser.add_argument("--subjects", type=int, default=10, help="synthetic training subjects")
    parser.add_argument("--val-subjects", type=int, default=2, help="synthetic validation subjects")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="records held out for validation (--data)")
    parser.add_argument("--hours", type=float, default=6.0, help="hours per synthetic night")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=5.0, help="stop after the training pass that crosses this")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            records = read_records(args.data, args.channel)
            n_val = max(1, round(len(records) * args.val_fraction)) if len(records) > 1 else 0
            val, records = records[:n_val], records[n_val:]
            cohort = {"source": "Sleep-EDF", "channel": args.channel, "records": len(records) + len(val)}
        else:
            total = args.subjects + args.val_subjects
            everything = synthetic_records(total, args.seed, args.hours, Path(tmp))
            val, records = everything[args.subjects :], everything[: args.subjects]
            cohort = {"source": "synthetic (edgetta.sleep.synth, unshifted subjects)", "subjects": total}
            cohort.update(seed=args.seed, hours=args.hours)
    cohort["train_epochs"] = int(sum(len(r[2]) for r in records))
    cohort["val_epochs"] = int(sum(len(r[2]) for r in val))
    print(f"{len(records)} training records ({cohort['train_epochs']} epochs), {len(val)} validation", flush=True)

    model, log = train(
        records, val, epochs=args.epochs, minutes=args.minutes, seed=args.seed, width=args.width, lr=args.lr
    )
    x = np.concatenate([r[1] for r in records])
    rng = np.random.default_rng(args.seed)
    calib = x[rng.choice(len(x), min(256, len(x)), replace=False), None].astype(np.float32)
    preprocess = {"rate": 100.0, "zscore": "running", "zscore_momentum": DEFAULT_MOMENTUM}
    manifest = export_model(
        model, torch.from_numpy(calib[:4]), args.out, class_names=STAGES, calib=calib, preprocess=preprocess
    )
    synthetic = not args.data
    command = "python tools/train_sleep.py " + " ".join(sys.argv[1:])
    manifest["training"] = {
        "synthetic": synthetic,
        "data": cohort,
        "command": command,
        "model": {"family": "TinySleepNet-like (edgetta.zoo.sleep)", "width": args.width, "causal": "single-epoch"},
        **log,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    caveat = (
        "Synthetic EEG is not real EEG: expect no useful accuracy on real recordings; train on Sleep-EDF with "
        "`--data` for that."
        if synthetic
        else "Validation records: see the manifest."
    )
    (args.out / "README.md").write_text(
        README.format(
            kind="synthetic" if synthetic else "Sleep-EDF",
            width=args.width,
            momentum=DEFAULT_MOMENTUM,
            what=cohort["source"],
            caveat=caveat,
            command=command,
            seconds=log["seconds"],
        )
    )
    print(f"artifact written to {args.out} (trained {log['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
