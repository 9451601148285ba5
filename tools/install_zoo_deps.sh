#!/usr/bin/env bash
# Model code for tools/bench_zoo.py: torchvision (and timm when missing) installed WITHOUT dependencies into
# a folder of their own, so the CPU torch of the environment is never replaced (a plain `pip install
# torchvision` or `pip install timm` pulls a CUDA torch). torchvision 0.28.x is the release paired with
# torch 2.13; its wheels are CUDA builds whose C extension does not load next to a CPU torch, which the
# benchmark handles (tools/bench_zoo.py: load_torchvision). Folder: $EDGETTA_ZOO_DEPS, else
# ~/.cache/edgetta/zoo-deps.
set -euo pipefail
target="${EDGETTA_ZOO_DEPS:-$HOME/.cache/edgetta/zoo-deps}"
tv_version="${TORCHVISION_VERSION:-0.28.0}"
mkdir -p "$target"
python -m pip install --no-deps --target "$target" "torchvision==$tv_version"
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('timm') is None)"; then
  python -m pip install --no-deps --target "$target" timm
fi
echo "installed into $target (set $(printf '%s' EDGETTA_ZOO_DEPS) to use another folder)"
