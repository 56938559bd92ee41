"""The benchmark command on the smoke config: one well-formed JSON line with positive figures."""

import json
import math
import os
import subprocess
import sys

import pytest

from byol_jax import bench, cpu_autotune, models
from configs import smoke

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_POSITIVE = (
    "images_per_sec",
    "step_ms",
    "compile_s",
    "flops_per_image",
    "model_flops_per_image",
    "mfu",
)


def _check_result(result):
    for key in _POSITIVE:
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
        assert result[key] > 0, key
    assert result["backend"] == "cpu"
    assert result["dtype"] == "float32"
    assert result["conv_impl"] == "matmul"  # "auto" picks the explicit-matmul path on CPU
    assert result["devices"] >= 1
    assert result["peak_memory_bytes"] is None or result["peak_memory_bytes"] > 0
    # The plan it ran with: flags and the implementation of every convolution shape.
    plan = result["plan"]
    assert isinstance(plan["xla_flags"], str) and plan["layers"]
    for layer in plan["layers"]:
        assert layer["impl"] in ("native", "matmul") and layer["count"] >= 1


def test_bench_run_on_all_devices():
    # In-process on the test devices (8 fake CPU devices, see conftest.py).
    config = smoke.get_config()
    config.model.conv_impl = "auto"  # what users get; the smoke config pins native for tests
    # A plan that sends every 3x3 convolution to XLA's convolution, the rest to im2col + matmul.
    encoder = models.build_encoder("resnet_tiny", stem=config.model.stem, conv_impl="matmul")
    shapes = cpu_autotune.encoder_conv_shapes(encoder, config.data.image_size, 2)
    convs = tuple((k, "native" if k[4] == 3 else "matmul") for k in shapes)
    plan = cpu_autotune.Plan(xla_flags="", convs=convs, tuning_s=1.5, source="cache")
    result = bench.run(config, repeats=1, warmup=1, plan=plan, plan_name="tuned")
    _check_result(result)
    report = result["plan"]
    assert report["name"] == "tuned" and report["source"] == "cache" and report["tuning_s"] == 1.5
    assert {(layer["kernel"], layer["impl"]) for layer in report["layers"]} == {
        (k[4], "native" if k[4] == 3 else "matmul") for k in shapes
    }
    assert result["devices"] == 8
    assert "end_to_end_images_per_sec" not in result
    json.dumps(result)  # JSON-able


def test_bench_command_with_input_prints_one_json_line():
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS="")
    # Keep compilation short: the figures only need to be well formed, not fast.
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "byol_jax.bench",
            "--config=configs/smoke.py",
            "--config.batch_size=8",
            "--config.model.conv_impl=auto",
            "--plan=default",  # untuned: tests do not pay for tuning
            "--repeats=1",
            "--warmup=1",
            "--input",
        ],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, process.stdout
    result = json.loads(lines[0])
    _check_result(result)
    assert result["batch_size"] == 8 and result["devices"] == 1
    assert result["plan"]["name"] == "default" and result["plan"]["tuning_wall_s"] == 0
    assert result["dataset"] == "fashion_mnist"  # the smoke config's offline IDX data
    assert result["end_to_end_images_per_sec"] > 0 and result["end_to_end_ratio"] > 0


def test_spec_peak_table():
    class FakeDevice:
        device_kind = "NVIDIA H200"

    assert bench.spec_peak_flops(FakeDevice(), "bfloat16") == pytest.approx(989e12)
    FakeDevice.device_kind = "cpu"
    assert bench.spec_peak_flops(FakeDevice(), "float32") is None
