"""The accelerator preflight: real compiles for a TPU topology and a GPU, checked independently.

The compiles need libtpu and the CUDA PJRT plugin (requirements-preflight.txt, installed by
.ci/run); without them those tests skip and say which package is missing. Memory figures are
checked against the byte count of the real train state, FLOPs against hand counts.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import accelerators, flop_count, models, parallel, preflight, train, train_data
from configs import smoke


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


HAVE_LIBTPU = _installed("libtpu")
HAVE_CUDA_PLUGIN = _installed("jax_plugins.xla_cuda12")
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu not installed (pip install -r requirements-preflight.txt)"
)
needs_cuda_plugin = pytest.mark.skipif(
    not HAVE_CUDA_PLUGIN,
    reason="jax-cuda12-plugin not installed (pip install -r requirements-preflight.txt)",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nbytes(tree) -> int:
    return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def smoke_state_bytes() -> dict[str, int]:
    """Byte counts of the real (computed, not abstract) smoke train state, by part."""
    config = smoke.get_config()
    experiment = train.build_experiment(
        config, num_classes=preflight.DEFAULT_NUM_CLASSES, num_train_examples=256
    )
    state = jax.device_get(train.initial_state(experiment, config.seed))
    return {
        "state": _nbytes(state),
        "online": _nbytes(state.online_params),
        "target": _nbytes(state.target_params),
        "optimizer": _nbytes(state.opt_state),
    }


def _check_train_report(report: dict, state_bytes: dict[str, int], chips: int) -> None:
    config = smoke.get_config()
    per_chip = config.batch_size // chips
    assert report["chips"] == chips and report["per_chip_batch"] == per_chip
    assert report["global_batch"] == config.batch_size
    memory = report["memory"]
    # The state holds online parameters, a target copy of most of them and the LARS momentum
    # (one more copy of the trainable parameters): at least ~3 copies of the online network.
    assert state_bytes["state"] >= state_bytes["online"] + state_bytes["target"]
    assert state_bytes["optimizer"] >= state_bytes["online"]
    size, with_valid = train_data.train_source_shape(config)
    # uint8 images, int32 labels (and int32 (height, width) valid sizes).
    batch_bytes = per_chip * (size**2 * 3 + 4 + (8 if with_valid else 0))
    assert memory["arguments"] >= state_bytes["state"] + batch_bytes
    # Donation: the new state reuses the old state's buffers.
    assert memory["aliased"] >= state_bytes["state"]
    assert memory["total"] == (
        memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]
    )
    assert memory["total"] >= state_bytes["state"] + batch_bytes
    assert report["fits"] is True
    # The smoke step's FLOPs: at least the hand count of its convolutions and dense layers,
    # and not wildly more (augmentation, BatchNorm and LARS add a share at 16 px).
    ratio = report["flops_per_image"] / report["flop_count_per_image"]
    assert 0.95 < ratio < 3.0, ratio


@needs_libtpu
def test_tpu_compile_of_the_smoke_train_step(smoke_state_bytes):
    reports = preflight.run(smoke.get_config(), "tpu:v5e:2x2", fast=True, hlo=True)
    assert len(reports) == 1
    report = reports[0]
    assert report["device_kind"].startswith("TPU v5")
    assert report["chip_memory"] == 16 * accelerators.GIB
    assert report["flops_source"] == "compiled cost analysis"
    assert report["conv_impl"] == "native"  # "auto" resolves for the target, not the host
    _check_train_report(report, smoke_state_bytes, chips=4)
    # Cross-replica BatchNorm and the gradient mean are all-reduces over the topology.
    assert report["hlo"]["all_reduces"] > 0


@needs_cuda_plugin
def test_gpu_compile_of_the_smoke_train_step(smoke_state_bytes):
    [report] = preflight.run(smoke.get_config(), "gpu:h100:2", fast=True)
    assert report["device_kind"] == "NVIDIA H100 80GB HBM3"
    assert report["usable_memory"] == int(0.75 * report["chip_memory"])
    assert report["flops_source"].startswith("pre-optimization HLO")
    _check_train_report(report, smoke_state_bytes, chips=2)


def _tiny_model_flops(target_spec: str) -> tuple[float, float]:
    """XLA's FLOPs for a conv + dense forward pass compiled for the target, and a hand count."""
    target = accelerators.parse_target(target_spec)
    devices = accelerators.topology_devices(target)
    batch, size, c_in, c_out, k, classes = 8, 32, 16, 32, 3, 128

    def forward(x, kernel, dense):
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y.reshape(batch, -1) @ dense

    shapes = [(batch, size, size, c_in), (k, k, c_in, c_out), (size * size * c_out, classes)]
    args = [jax.ShapeDtypeStruct((len(devices), *s), jnp.float32) for s in shapes]
    lowered = parallel.map_function(forward, devices=devices).lower(*args)
    compiled = lowered.compile(compiler_options=preflight.FAST_OPTIONS)
    flops, _ = preflight.program_flops(lowered, compiled, target.platform)
    # SAME padding: every output pixel has k*k*c_in taps except at the border; count exactly.
    taps = sum(min(i + k // 2, size - 1) - max(i - k // 2, 0) + 1 for i in range(size))  # per axis
    conv_macs = batch * taps * taps * c_in * c_out
    dense_macs = batch * size * size * c_out * classes
    return flops, 2.0 * (conv_macs + dense_macs)


@needs_libtpu
def test_tpu_flops_of_a_tiny_model_match_a_hand_count():
    flops, hand = _tiny_model_flops("tpu:v5e:2x2")
    assert flops == pytest.approx(hand, rel=0.03)


@needs_cuda_plugin
def test_gpu_flop_estimate_of_a_tiny_model_matches_a_hand_count():
    flops, hand = _tiny_model_flops("gpu:h100:1")
    assert flops == pytest.approx(hand, rel=0.03)


@pytest.mark.parametrize(
    "encoder,stem,size", [("resnet50", "imagenet", 64), ("resnet18", "cifar", 32)]
)
def test_resnet_hand_count_matches_xla_on_the_forward_pass(encoder, stem, size):
    # XLA's cost analysis of the real model (CPU, before optimization) also counts BatchNorm,
    # ReLU and pooling; the convolutions are >97% of it.
    net = models.build_encoder(encoder, stem=stem, conv_impl="native")
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
    lowered = jax.jit(lambda v, x: net.apply(v, x, train=False)).lower(variables, x)
    xla = float(lowered.cost_analysis()["flops"])
    hand = 2.0 * flop_count.resnet_macs(
        net.stage_sizes, net.block, net.base_width * net.width, net.stem, size
    )
    assert hand <= xla <= 1.03 * hand


def test_resnet50_hand_count_is_the_published_figure():
    # ResNet-50 v1.5 at 224 px: 4.1 G multiply-adds (the "4.1 GFLOPs" of the literature,
    # which counts whole windows, padding included); XLA's convention skips padded taps.
    padded = flop_count.resnet_macs((3, 4, 6, 3), "bottleneck", 64, "imagenet", 224, True)
    assert padded == pytest.approx(4.1e9, rel=0.01)
    exact = flop_count.resnet_macs((3, 4, 6, 3), "bottleneck", 64, "imagenet", 224)
    assert 0.9 * padded < exact < padded


def test_max_batch_search_finds_the_boundary_with_few_compiles():
    # A stand-in compiler whose memory is linear in the batch plus a step at multiples of 64
    # (as padding does); the search must land on the exact boundary.
    calls = []
    usable = 1000.0

    def compile_at(batch: int) -> dict:
        calls.append(batch)
        total = 100 + 3.1 * batch + (20 if batch % 64 == 0 else 0)
        memory = {"total": total, "generated_code": 0}
        return {"per_chip_batch": batch, "memory": memory, "fits": total <= usable,
                "usable_memory": usable}  # fmt: skip

    best, reports = preflight.max_batch(compile_at, start=32, multiple=8)
    truth = max(b for b in range(8, 4096, 8) if 100 + 3.1 * b + (20 if b % 64 == 0 else 0) <= 1000)
    assert best == truth
    assert len(calls) == len(set(calls)) == len(reports)
    assert len(calls) <= 6


def test_bad_targets_and_batches_are_one_line_errors():
    with pytest.raises(accelerators.TargetError, match="allowed: tpu:v3"):
        accelerators.parse_target("tpu:v9:2x2")
    with pytest.raises(accelerators.TargetError, match="2x2 or 2x2x1"):
        accelerators.parse_target("tpu:v5e:four")
    with pytest.raises(accelerators.TargetError, match="positive integer"):
        accelerators.parse_target("gpu:h100:0")
    config = smoke.get_config()
    config.batch_size = 18
    with pytest.raises(preflight.PreflightError, match="does not divide over the 4 devices"):
        preflight.run(config, "tpu:v5e:2x2")
    with pytest.raises(preflight.PreflightError, match="step"):
        preflight.run(smoke.get_config(), "tpu:v5e:2x2", step="eval")


def test_missing_toolchain_names_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # makes `import libtpu` fail
    monkeypatch.setitem(sys.modules, "jax_plugins.xla_cuda12", None)
    with pytest.raises(accelerators.TargetError, match=r"pip install libtpu==0\.0\.42"):
        accelerators.topology_devices(accelerators.parse_target("tpu:v5e:2x2"))
    with pytest.raises(accelerators.TargetError, match=r"pip install jax-cuda12-plugin"):
        accelerators.topology_devices(accelerators.parse_target("gpu:h100:8"))


def test_command_line_error_is_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "byol_jax.preflight", "--config=configs/smoke.py",
         "--target=tpu:v5e:3x3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: batch_size 16 does not divide over the 9 devices")
    )


def test_whole_image_configs_compile_the_step_with_valid_sizes():
    # Whole-image training (data.train_source_size) feeds padded sources plus each image's valid
    # size; the preflight must compile that step, at that size (no compile needed to check).
    config = smoke.get_config()
    config.data.train_source_size = 24
    _, (_, batch) = preflight.train_step_program(config, jax.devices()[:2], "cpu", 4)
    assert batch["image"].shape == (2, 4, 24, 24, 3)
    assert batch["valid"].shape == (2, 4, 2) and batch["valid"].dtype == jnp.int32
    _, (_, square) = preflight.train_step_program(smoke.get_config(), jax.devices()[:2], "cpu", 4)
    assert "valid" not in square and square["image"].shape[2] == config.data.source_size


def test_hlo_summary_counts_copies_of_entry_parameters():
    class Compiled:  # what hlo_summary reads of an executable: its optimized HLO text
        def as_text(self) -> str:
            return "\n".join([
                "HloModule step",
                "%fused (p: f32[4]) -> f32[4] {",
                "  %p = f32[4]{0} parameter(0)",
                "  ROOT %c = f32[4]{0} copy(%p)",  # inside a fusion: not an entry buffer
                "}",
                "ENTRY %main (a: f32[4,4], b: u8[2]) -> f32[4,4] {",
                "  %Arg_0.1 = f32[4,4]{1,0} parameter(0)",
                "  %Arg_1.2 = u8[2]{0} parameter(1)",
                "  %copy.3 = f32[4,4]{0,1} copy(f32[4,4]{1,0} %Arg_0.1)",
                "  %copy.4 = f32[4,4]{1,0} copy(%copy.3)",
                "  %ar = bf16[8]{0} all-reduce(%copy.4), to_apply=%add",
                "  ROOT %t = f32[4,4]{1,0} transpose(%copy.4), dimensions={1,0}",
                "}",
            ])  # fmt: skip

    summary = preflight.hlo_summary(Compiled())
    assert summary["entry_copies"] == 2
    assert summary["entry_parameter_copies"] == 1
    assert summary["entry_parameter_copy_bytes"] == 4 * 4 * 4
    assert summary["entry_transposes"] == 1
    assert summary["all_reduces"] == 1 and summary["all_reduce_bytes"] == 16


@needs_libtpu
def test_tpu_compile_of_the_linear_eval_training_call():
    # The linear evaluator's mapped training call (frozen encoder, scanned steps) for a TPU.
    config = smoke.get_config()
    config.evals.linear.batch_size = 32
    [report] = preflight.run(config, "tpu:v5e:2x2", step="linear_eval", fast=True)
    assert report["step"] == "linear_eval" and report["per_chip_batch"] == 8
    assert report["fits"] is True and report["memory"]["total"] > 0
    assert report["flops_per_image"] > 0


@needs_libtpu
@pytest.mark.parametrize("step", ["embed", "knn"])
def test_tpu_compile_of_the_evaluation_steps(step):
    # The evaluators' feature extraction and one sharded-kNN call (ImageNet-size bank split over
    # 4 chips: 320k rows of 256-d features = 328 MB of arguments per chip at least).
    config = smoke.get_config()
    config.data.eval_batch_size = 16
    config.evals.knn.chunk_size = 64
    [report] = preflight.run(config, "tpu:v5e:2x2", step=step, fast=True)
    assert report["step"] == step and report["fits"] is True
    per_chip = {"embed": 16 // 4, "knn": 64 // 4}[step]  # eval batch per 4-chip host
    assert report["per_chip_batch"] == per_chip
    if step == "knn":
        dim = models.embedding_dim(
            train.build_experiment(
                config, num_classes=1000, num_train_examples=1000
            ).online_net.encoder
        )
        rows = -(-preflight.DEFAULT_NUM_TRAIN_EXAMPLES // 4)
        assert report["memory"]["arguments"] >= rows * (dim + 1) * 4
