"""Execution-provider selection and TensorRT options (the GPU paths cannot run here; their
configuration can be checked)."""

from __future__ import annotations

import pytest

from edgetta.contract import load_artifact
from edgetta.demo import asset_path
from edgetta.engines import EngineOptions
from edgetta.engines.ort import CPU, TENSORRT, provider_options, resolve_providers
from edgetta.errors import ConfigError, ExportError


def test_auto_providers_end_with_cpu():
    providers = resolve_providers(EngineOptions())
    assert providers[-1] == CPU


def test_unavailable_provider_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="engine.providers: NoSuchExecutionProvider not available"):
        resolve_providers(EngineOptions(providers=["NoSuchExecutionProvider"]))


def test_tensorrt_options_have_caches_and_a_fixed_profile(tmp_path):
    artifact = load_artifact(asset_path("fmnist_resnet_bn"))
    opts = provider_options(
        TENSORRT, EngineOptions(cache_dir=str(tmp_path), max_batch=32, fp16=True), artifact, "adapt"
    )
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_timing_cache_enable"] == "True"
    assert opts["trt_profile_min_shapes"] == "input:1x1x28x28,entropy_weight:1,ce_weight:1"
    assert opts["trt_profile_max_shapes"] == "input:32x1x28x28,entropy_weight:32,ce_weight:32"
    assert opts["trt_fp16_enable"] == "True"
    assert (tmp_path / "adapt").is_dir()
    assert provider_options(CPU, EngineOptions(), artifact, "infer") == {}


def test_build_trt_without_tensorrt_says_where_to_build():
    from edgetta.export.tensorrt import build_engines, tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed: the error path does not apply")
    with pytest.raises(ExportError, match="TensorRT is not installed"):
        build_engines(asset_path("fmnist_resnet_bn"))
