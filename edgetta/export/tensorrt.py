"""Build TensorRT engines from an artifact's ONNX graphs (offline, on the target device).

Written against the TensorRT 10 Python API (``tensorrt.Builder``, ``OnnxParser``, optimisation
profiles, ``build_serialized_network``). NEVER RUN HERE: this machine has no GPU and no TensorRT.
The graphs themselves are checked for TensorRT compatibility by ``edgetta inspect --trt-lint`` and
run under ONNX Runtime's TensorRT execution provider through ``engine.providers`` in a config.
Parameters stay engine inputs, so one engine serves every adapted state. The graphs keep their frozen
weights in the artifact's ``weights.bin`` (ONNX external data); ``OnnxParser.parse_from_file`` resolves it
relative to the graph's folder (parsing bytes would need the folder passed as the parser's path argument).
"""

from __future__ import annotations

from pathlib import Path

from edgetta.contract import load_artifact
from edgetta.errors import ExportError


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def build_engines(
    artifact_dir: str | Path,
    max_batch: int = 64,
    opt_batch: int | None = None,
    fp16: bool = False,
    workspace_mb: int = 1024,
    graphs: tuple[str, ...] = ("infer", "adapt"),
) -> dict[str, Path]:
    """Write ``<graph>.b<max_batch>.engine`` next to the graphs; return their paths."""
    if not tensorrt_available():
        raise ExportError(
            "TensorRT is not installed here: build engines on the target device "
            "(JetPack or `pip install tensorrt`), or use engine.providers: [TensorrtExecutionProvider]"
        )
    import tensorrt as trt

    artifact = load_artifact(artifact_dir)
    logger = trt.Logger(trt.Logger.WARNING)
    item = tuple(int(d) for d in artifact.input_shape[1:])
    opt = opt_batch or max_batch
    built = {}
    for which in graphs:
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        # From the file, not its bytes: the parser then finds the external weights file next to the graph.
        if not parser.parse_from_file(str(artifact.graph_path(which))):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT could not parse {which}.onnx: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)
            if -1 not in shape:
                continue
            if tensor.name == artifact.input_name:
                profile.set_shape(tensor.name, (1, *item), (opt, *item), (max_batch, *item))
            else:  # per-sample weight vectors of the adapt graph
                profile.set_shape(tensor.name, (1,), (opt,), (max_batch,))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"TensorRT failed to build an engine for {which}.onnx (see the log above)")
        path = artifact.path / f"{which}.b{max_batch}{'.fp16' if fp16 else ''}.engine"
        path.write_bytes(bytes(serialized))
        built[which] = path
    return built
