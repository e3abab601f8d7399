"""server.providers reports the onnxruntime providers a session really loaded."""

from __future__ import annotations

import logging

import onnxruntime
import pytest

from server.providers import loaded_providers


def test_cpu_provider_loads() -> None:
    assert loaded_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_default_requests_every_available_provider() -> None:
    loaded = loaded_providers()
    assert "CPUExecutionProvider" in loaded
    assert set(loaded) <= set(onnxruntime.get_available_providers())


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="CUDA is installed, so it may load"
)
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_missing_provider_falls_back_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.providers")
    loaded = loaded_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert loaded == ["CPUExecutionProvider"]
    assert "['CUDAExecutionProvider'] were requested but did not load" in caplog.text
