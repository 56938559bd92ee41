"""CPU autotuning: picks the faster of known candidates, keeps numerics, caches, defers to users.

No speed of this machine is asserted: the candidates' relative speed is made known by running
one of them many times over, and the chosen plans are checked for outputs and gradients.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import cpu_autotune, models, train
from configs import fashion_mnist, smoke


def _slowed(run, times):
    def slow():
        out = None
        for _ in range(times):
            out = run()
        return out

    return slow


@pytest.mark.parametrize("slow", ["native", "matmul"])
def test_tuner_picks_the_faster_of_two_known_candidates(slow):
    # The same convolution twice; one of them is made 20x slower on purpose.
    key = models.conv_key(4, 4, 8, 8, 3, 1, jnp.float32)
    candidates = cpu_autotune.conv_candidates(key, 4)
    candidates[slow] = _slowed(candidates[slow], 20)
    times = cpu_autotune.time_candidates(candidates, block=jax.block_until_ready)
    assert set(times) == {"native", "matmul"}
    assert cpu_autotune.fastest(times) == ({"native", "matmul"} - {slow}).pop()


def test_non_default_flags_must_win_by_the_margin():
    times = {"": 1.0, "--other": 0.97}
    assert cpu_autotune.fastest(times, default="", margin=0.05) == ""
    assert cpu_autotune.fastest({"": 1.0, "--other": 0.9}, default="", margin=0.05) == "--other"
    assert cpu_autotune.fastest({"": 0.5, "--other": 0.9}, default="", margin=0.05) == ""


def _measured(key, count, native, matmul):
    return {"key": list(key), "count": count, "times": {"native": native, "matmul": matmul}}


def test_choose_plan_weights_shapes_and_compares_flags_on_common_shapes():
    a = (8, 8, 16, 16, 3, 1, "float32")
    b = (4, 4, 16, 32, 3, 2, "float32")
    c = (2, 2, 32, 32, 3, 1, "float32")
    results = {
        # Default flags: a is faster native, b faster as matmul; total 3*1 + 1*2 = 5 ms.
        "": {
            "num_shapes": 3,
            "measured": [_measured(a, 3, 1e-3, 4e-3), _measured(b, 1, 5e-3, 2e-3)],
        },
        # Other flags: 3*0.5 + 1*1 = 2.5 ms on the common shapes a, b (c only measured here,
        # so it does not count against this flag set).
        "--x": {
            "num_shapes": 3,
            "measured": [
                _measured(a, 3, 2e-3, 0.5e-3),
                _measured(b, 1, 1e-3, 3e-3),
                _measured(c, 2, 9.0, 9.0),
            ],
        },
    }
    flags, convs, totals, complete = cpu_autotune.choose_plan(results)
    assert flags == "--x"
    assert totals == pytest.approx({"": 5.0, "--x": 2.5})
    # a and b leave the untuned rule (a 4x, b 3x faster); c is a tie, so it keeps the rule's
    # choice for maps below 4x4 (im2col).
    assert dict(convs) == {a: "matmul", b: "native", c: "matmul"}
    assert not complete  # the default-flag worker ran out of time before shape c
    # Within the margin the default flags stay, with their own per-shape choices.
    results["--x"]["measured"][0] = _measured(a, 3, 1e-3, 1e-3)
    results["--x"]["measured"][1] = _measured(b, 1, 1.95e-3, 3e-3)
    flags, convs, _, _ = cpu_autotune.choose_plan(results)
    assert flags == "" and dict(convs) == {a: "native", b: "matmul"}


def test_a_shape_leaves_the_untuned_rule_only_by_the_margin():
    stem = (28, 28, 3, 32, 7, 2, "float32")  # the untuned rule: XLA's convolution
    assert models.cpu_conv_choice(stem) == "native"

    def plan(native, matmul):
        result = {"num_shapes": 1, "measured": [_measured(stem, 1, native, matmul)]}
        return dict(cpu_autotune.choose_plan({"": result}, conv_margin=0.10)[1])[stem]

    assert plan(1.0, 0.95) == "native"  # 5% faster in isolation: not trusted
    assert plan(1.0, 0.80) == "matmul"  # 20% faster: taken
    assert plan(0.5, 1.0) == "native"


def test_every_plan_computes_the_same_outputs_and_gradients():
    # The worker's view of the encoder (its convolutions at this batch), then the two extreme
    # plans: every convolution on XLA's convolution, every one as im2col + matmul.
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    shapes = cpu_autotune.encoder_conv_shapes(
        models.build_encoder("resnet_tiny", conv_impl="matmul"), 16, 4
    )
    assert len(shapes) >= 6 and sum(shapes.values()) >= len(shapes)
    encoders = {
        choice: models.build_encoder(
            "resnet_tiny", conv_impl="matmul", conv_plan=tuple((k, choice) for k in shapes)
        )
        for choice in ("native", "matmul")
    }
    variables = encoders["native"].init(jax.random.key(1), x)

    @functools.partial(jax.jit, static_argnums=1)
    def loss(params, encoder):
        out, _ = encoder.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out)), out

    (_, out_n), g_n = jax.value_and_grad(loss, has_aux=True)(
        variables["params"], encoders["native"]
    )
    (_, out_m), g_m = jax.value_and_grad(loss, has_aux=True)(
        variables["params"], encoders["matmul"]
    )

    # Training-mode BatchNorm over a tiny batch amplifies float reordering between the two
    # convolution algorithms in low-variance channels (seen on an Intel Xeon: one output off by
    # 1.7e-4, one gradient entry by 0.4%), so compare whole arrays by relative error norm; a
    # wrong implementation is off by O(1).
    def relative_error(a, b):
        return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-12))

    assert relative_error(out_m, out_n) < 1e-4
    errors = jax.tree.leaves(jax.tree.map(relative_error, g_m, g_n))
    assert max(errors) < 1e-3, errors


def test_worker_times_every_convolution_of_the_encoder():
    spec = cpu_autotune.TuneSpec("resnet_tiny", 1, None, "cifar", "float32", 8, 16)

    class Lines(list):
        def write(self, text):
            self.append(text)

        def flush(self):
            pass

    lines = Lines()
    result = cpu_autotune.run_worker(spec, deadline=time.time() + 600, out=lines)
    batch = 16 // jax.device_count()
    shapes = cpu_autotune.encoder_conv_shapes(
        models.build_encoder("resnet_tiny", stem="cifar", conv_impl="matmul"), 8, batch
    )
    assert result["backend"] == "cpu" and result["batch"] == batch
    assert result["num_shapes"] == len(shapes) == len(result["measured"])
    for entry in result["measured"]:
        assert shapes[tuple(entry["key"])] == entry["count"]
        assert set(entry["times"]) == {"native", "matmul"}
        assert all(t > 0 for t in entry["times"].values())
    assert "".join(lines).split("\n")[-2] == f"progress {2 * len(shapes)} {2 * len(shapes)}"


def test_plan_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    # One real worker process with one flag set and a tiny network (bounded to 60 s: under load
    # it may time only some shapes), then a cache hit.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = cpu_autotune.TuneSpec("resnet_tiny", 1, None, "stride2", "float32", 8, 2)
    start = time.perf_counter()
    first = cpu_autotune.plan_for(spec, flag_sets=("",), budget_s=60, progress=None)
    assert time.perf_counter() - start < 120  # the budget bounds it (plus one cut-off compile)
    assert first.source == "measured" and first.xla_flags == ""
    assert {impl for _, impl in first.convs} <= {"native", "matmul"}
    if not first.convs:
        # So loaded that not one shape was timed: nothing cached, the next run measures again.
        assert first.cache_file is None and not os.listdir(tmp_path)
        return
    assert first.cache_file.startswith(os.path.join(str(tmp_path), "byol_jax", "cpu_autotune"))
    second = cpu_autotune.plan_for(spec, flag_sets=("",), budget_s=60, progress=None)
    assert second.source == "cache" and second.convs == first.convs
    assert second.tuning_s == first.tuning_s  # the original measurement's time
    with open(first.cache_file) as f:
        stored = json.load(f)
    assert stored["key"]["cpu_model"] == cpu_autotune.cpu_model()
    assert stored["key"]["jax"] == jax.__version__ and stored["key"]["spec"]["batch_size"] == 2
    # Another shape set (batch) is another entry.
    other = cpu_autotune.cache_key(
        cpu_autotune.TuneSpec("resnet_tiny", 1, None, "stride2", "float32", 8, 4), ("",)
    )
    assert cpu_autotune._cache_file(other) != first.cache_file


def test_explicit_settings_keep_the_untuned_behaviour(monkeypatch):
    config = fashion_mnist.get_config()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert train.cpu_tune_spec(config) is None  # user-set XLA_FLAGS win
    monkeypatch.setenv("XLA_FLAGS", "")
    spec = train.cpu_tune_spec(config)
    assert spec == cpu_autotune.TuneSpec("resnet18", 1, 64, "imagenet", "float32", 28, 64)
    config.cpu_autotune = False
    assert train.cpu_tune_spec(config) is None
    assert train.cpu_tune_spec(smoke.get_config()) is None  # conv_impl="native" is explicit


def test_flags_cannot_change_after_the_backend_started():
    jax.devices()
    plan = cpu_autotune.Plan(xla_flags="--x", convs=(), tuning_s=0.0, source="measured")
    with pytest.raises(RuntimeError, match="before JAX initializes"):
        cpu_autotune.apply_flags(plan)
