"""Build the assets `edgetta demo` ships: the exported BN model artifact and a small Fashion-MNIST
test stream passing through a changing environment (pre-corrupted, so the demo needs neither torch
nor scipy). Needs edgetta[export,bench] and a trained model from tools/train_fmnist.py.

    python tools/train_fmnist.py --model resnet_bn --epochs 3 --out models/fmnist_resnet_bn.pt
    python tools/build_demo_assets.py --model models/fmnist_resnet_bn.pt

To re-export the bundled artifact in the current artifact format without the trained checkpoint, take the
weights from the bundled artifact itself (its graphs hold every frozen weight, params.safetensors the norm
parameters and statistics) and leave the demo stream as it is:

    python tools/build_demo_assets.py --from-artifact edgetta/assets/fmnist_resnet_bn --artifact-only
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from edgetta.data import CLASS_NAMES, MEAN, STD, load_fashion_mnist, to_model_input
from edgetta.data.corruptions import corrupt
from edgetta.export import export_model
from edgetta.zoo.models import FAMILIES

ASSETS = Path(__file__).resolve().parents[1] / "edgetta" / "assets"
# (phase name, corruption or None, severity): clean, then several corruptions at high severity, then clean.
PHASES = [
    ("clean", None, 0),
    ("gaussian_noise", "gaussian_noise", 5),
    ("defocus_blur", "defocus_blur", 5),
    ("impulse_noise", "impulse_noise", 5),
    ("fog", "fog", 4),
    ("clean again", None, 0),
]
NOTICE = """Fashion-MNIST subset (c) 2017 Zalando SE, released under the MIT License.
https://github.com/zalandoresearch/fashion-mnist  (Xiao, Rasul & Vollgraf, 2017)

The MIT License (MIT) Copyright (c) 2017 Zalando SE

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

The corrupted images in demo_stream.npz were derived from the Fashion-MNIST test set by tools/build_demo_assets.py.
"""


def weights_from_artifact(model: torch.nn.Module, path: Path, example: torch.Tensor) -> None:
    """Load into ``model`` the weights of an artifact exported from the same architecture. The graphs name
    frozen weight i ``const_i`` (the exporter's order, edgetta.export.prepare.constant_names); a weight the
    exporter folded into its transpose (a linear layer's) is taken back from that transpose."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    from edgetta.export.prepare import prepare_model

    names = prepare_model(model, example).constant_names
    graph = onnx.load(str(path / "infer.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {
        k: torch.from_numpy(v.copy()) for k, v in load_file(str(path / "params.safetensors")).items() if "/" not in k
    }
    for i, name in enumerate(names):
        value = inits.get(f"const_{i}")
        if value is None:
            original = name.replace("fc.classifier.", "fc.")  # prepare wraps the classifier
            shape = tuple(dict(model.named_parameters()).get(original, torch.empty(0)).shape)
            others = [v for k, v in inits.items() if not k.startswith("const_") and v.shape == shape[::-1]]
            if len(shape) != 2 or len(others) != 1:
                raise SystemExit(f"cannot recover {name} {shape} from {path}: pass --model with the checkpoint")
            value = others[0].T
        state[name] = torch.from_numpy(value.copy())
    own = {k.replace("fc.classifier.", "fc."): v for k, v in state.items()}  # prepare wraps the classifier
    model.load_state_dict(own, strict=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/fmnist_resnet_bn.pt")
    parser.add_argument("--per-phase", type=int, default=320)
    parser.add_argument("--calib", type=int, default=2000, help="train samples for the Fisher diagonal")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-artifact", help="take the weights from this artifact instead of --model's checkpoint")
    parser.add_argument("--artifact-only", action="store_true", help="re-export the artifact, keep the demo stream")
    args = parser.parse_args()

    meta = json.loads(Path(args.model).with_suffix(".json").read_text())
    model = FAMILIES[meta["model"]](**meta["kwargs"])
    train_x, _ = load_fashion_mnist("train", args.data_root)
    calib = to_model_input(train_x[np.random.default_rng(args.seed).permutation(len(train_x))[: args.calib]])
    if args.from_artifact:
        source = Path(args.from_artifact)
        staged = source.with_name(source.name + ".source")  # the export replaces the folder it reads from
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(source, staged)
        weights_from_artifact(model, staged, torch.from_numpy(calib[:8]))
        shutil.rmtree(staged)
    else:
        model.load_state_dict(torch.load(args.model, weights_only=True))
    model.eval()
    ASSETS.mkdir(parents=True, exist_ok=True)
    manifest = export_model(
        model,
        torch.from_numpy(calib[:8]),
        ASSETS / "fmnist_resnet_bn",
        calib=calib,
        class_names=CLASS_NAMES,
        preprocess={"scale": 1 / 255, "mean": [MEAN], "std": [STD], "layout": "NCHW"},
    )
    print(
        f"artifact: clean test accuracy of the source model {meta['clean_test_accuracy']:.4f}, "
        f"export {manifest['export_seconds']} s"
    )
    if args.artifact_only:
        return

    test_x, test_y = load_fashion_mnist("test", args.data_root)
    order = np.random.default_rng(args.seed + 1).permutation(len(test_x))
    images, labels, phase = [], [], []
    for i, (_, corruption, severity) in enumerate(PHASES):
        idx = order[i * args.per_phase : (i + 1) * args.per_phase]
        x = test_x[idx] if corruption is None else corrupt(test_x[idx], corruption, severity, seed=args.seed + i)
        images.append(x)
        labels.append(test_y[idx])
        phase.append(np.full(len(idx), i, np.int64))
    np.savez_compressed(
        ASSETS / "demo_stream.npz",
        images=np.concatenate(images).astype(np.uint8),
        labels=np.concatenate(labels).astype(np.int64),
        phase=np.concatenate(phase),
        phase_names=np.array([p[0] for p in PHASES]),
        severities=np.array([p[2] for p in PHASES], dtype=np.int64),
    )
    (ASSETS / "FASHION_MNIST_LICENSE.txt").write_text(NOTICE)
    print(f"demo stream: {len(PHASES)} phases x {args.per_phase} images -> {ASSETS / 'demo_stream.npz'}")


if __name__ == "__main__":
    main()
