"""Export every reference model family at its default size and report parity figures, lint results
and export time (the figures quoted in README and the export issue).

    python tools/export_report.py --out docs/export.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from edgetta.export import export_model
from edgetta.zoo.models import FAMILIES

SHAPES = {"sleep_cnn": (16, 1, 3000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/export.md")
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    rows = []
    for name in args.families.split(","):
        torch.manual_seed(0)
        model = FAMILIES[name]()
        shape = SHAPES.get(name, (16, 3, 32, 32))
        model.train()
        with torch.no_grad():  # non-trivial running statistics
            for _ in range(3):
                model(torch.randn(*shape) * 1.5 + 0.3)
        model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            manifest = export_model(model, torch.randn(*shape), Path(tmp) / name)
        params = sum(p.numel() for p in model.parameters())
        r0, r1 = manifest["verification"]["results"]
        lint = all(manifest["trt_lint"][g]["ok"] for g in ("infer", "adapt"))
        rows.append(
            {
                "family": name,
                "parameters": params,
                "norm_layers": len(manifest["norm_layers"]),
                "logits_a0": max(r0["logits_infer"], r0["logits_adapt"]),
                "logits_a1": max(r1["logits_infer"], r1["logits_adapt"]),
                "grad_a0": r0["grad_max"],
                "grad_a1": r1["grad_max"],
                "torch32_a1": r1["torch32_grad"],
                "trt_lint": lint,
                "export_seconds": manifest["export_seconds"],
            }
        )
        print(json.dumps(rows[-1]))
    lines = [
        "# Export parity per model family",
        "",
        f"Command: `python tools/export_report.py --out {args.out}` (torch {torch.__version__}, CPU, 2 cores, "
        "shared machine). Figures are norm-relative differences from a float64 torch reference of the original "
        "model on the example batch (16 samples); `grad` is the worst single parameter's gradient.",
        "",
        "| family | params | norm layers | logits a=0 | logits a=1 | grad a=0 | grad a=1 | torch fp32 grad a=1 "
        "| TRT lint | export s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['parameters']:,} | {r['norm_layers']} | {r['logits_a0']:.1e} | "
            f"{r['logits_a1']:.1e} | {r['grad_a0']:.1e} | {r['grad_a1']:.1e} | {r['torch32_a1']:.1e} | "
            f"{'ok' if r['trt_lint'] else 'FAIL'} | {r['export_seconds']} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Replace only this report's section: the sections after it (## headings) are written by hand or other tools.
    rest = out.read_text().split("\n## ", 1) if out.exists() else []
    tail = "\n## " + rest[1] if len(rest) == 2 else ""
    out.write_text("\n".join(lines) + "\n" + tail)


if __name__ == "__main__":
    main()
