"""The onnxruntime execution providers that actually load on this machine.

onnxruntime lists a provider as available when its library is installed. A session still falls
back to the CPU without an error when the provider cannot start (for example CUDA without a
driver). So the server starts a session on a one-node model and reads which providers it loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx
import onnxruntime
from onnx import TensorProto, helper

logger = logging.getLogger(__name__)

# IR version 8 and opset 13 are old enough for every onnxruntime release this project accepts.
_PROBE_IR_VERSION = 8
_PROBE_OPSET = 13


def probe_model() -> bytes:
    """Return a serialized ONNX model with one Identity node on a float32 (1,) tensor."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "provider_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _PROBE_OPSET)], ir_version=_PROBE_IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def loaded_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Start an InferenceSession with ``requested`` providers (default: all available) and return those it loaded."""
    providers = list(requested) if requested is not None else onnxruntime.get_available_providers()
    session = onnxruntime.InferenceSession(probe_model(), providers=providers)
    loaded = list(session.get_providers())
    missing = [name for name in providers if name not in loaded]
    if missing:
        logger.warning("onnxruntime providers %s were requested but did not load; sessions fall back to %s", missing, loaded)
    return loaded
