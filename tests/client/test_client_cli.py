"""The archadapt command line against a stand-in server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from archadapt_client.cli import main

MODEL = b"onnx-model-bytes" * 10


def write_npz(path: Path) -> Path:
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]), class_names=np.array(["cat", "dog"]))
    return path


def test_adapt_saves_model_and_prints(
    fake_server, adapt_events, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.servicer.events = adapt_events(MODEL)
    out = tmp_path / "model.onnx"

    status = main(
        ["adapt", "--server", fake_server.address, "--data", str(write_npz(tmp_path / "d.npz")), "--out", str(out)]
    )

    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert out.read_bytes() == MODEL
    assert "validation accuracy: 0.7500 on 4 images" in captured.out
    assert 'normal: [["sep_conv_3x3", 0], ["skip_connect", 1]]' in captured.out
    assert "validate" in captured.out
    assert "2.00 s" in captured.out
    assert "adapt" in captured.err
    assert "2/2" in captured.err
    assert "loss=1.5000" in captured.err
    assert list(fake_server.servicer.requests[0].class_names) == ["cat", "dog"]


def test_adapt_bad_request_exits_1(
    fake_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="labels", description="need 2 classes")]
        )
    )
    fake_server.servicer.abort_status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message="invalid dataset", details=[detail]
    )

    status = main(
        [
            "adapt",
            "--server",
            fake_server.address,
            "--data",
            str(write_npz(tmp_path / "d.npz")),
            "--out",
            str(tmp_path / "model.onnx"),
        ]
    )

    captured = capsys.readouterr()
    assert status == 1
    assert "error: INVALID_ARGUMENT: invalid dataset\n" in captured.err
    assert "  labels: need 2 classes\n" in captured.err
    assert not (tmp_path / "model.onnx").exists()


def test_adapt_missing_data_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["adapt", "--server", "127.0.0.1:1", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m.onnx")]
    )

    assert status == 1
    assert "error: dataset path" in capsys.readouterr().err


def test_adapt_idx_without_labels_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images.idx"
    images.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")

    status = main(["adapt", "--server", "127.0.0.1:1", "--data", str(images), "--out", str(tmp_path / "m.onnx")])

    assert status == 1
    assert "--labels" in capsys.readouterr().err


def test_info_prints_server_info(fake_server, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["info", "--server", fake_server.address])

    output = capsys.readouterr().out
    assert status == 0
    assert "checkpoint: ckpt-test" in output
    assert "shape (C, H, W): (3, 32, 32)" in output
    assert "classes: 2 to 20" in output
    assert "reduction cells at 1, 3" in output


def test_invalid_timeout_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["info", "--server", "127.0.0.1:1", "--timeout", "0"])

    assert raised.value.code == 2
    assert "invalid timeout '0'" in capsys.readouterr().err


GENOTYPE = {
    "normal": [["avg_pool_3x3", 0], ["skip_connect", 1], ["sep_conv_3x3", 0], ["dil_conv_3x3", 2],
               ["max_pool_3x3", 1], ["sep_conv_5x5", 3], ["dil_conv_5x5", 0], ["skip_connect", 4]],
    "reduce": [["max_pool_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 2], ["avg_pool_3x3", 0],
               ["dil_conv_3x3", 1], ["sep_conv_5x5", 3], ["max_pool_3x3", 4], ["sep_conv_3x3", 2]],
}


def test_closed_output_pipe_ends_quietly(tmp_path: Path) -> None:
    """`archadapt show ... | head -0`: the reader is gone before the command writes."""
    genotype = tmp_path / "genotype.json"
    genotype.write_text(json.dumps(GENOTYPE))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "archadapt_client", "show", str(genotype), "--json"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(write_end)
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert "Broken pipe" not in completed.stderr
    assert "BrokenPipeError" not in completed.stderr
