"""Encoders and heads: standard parameter counts, shapes, conv implementations, sync BN."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import models


def _param_count(module, image_size=224):
    variables = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    )
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    "name,expected",
    [
        # torchvision counts minus the 1000-way classifier (fc.weight + fc.bias).
        ("resnet18", 11_689_512 - 513_000),
        ("resnet34", 21_797_672 - 513_000),
        ("resnet50", 25_557_032 - 2_049_000),
        ("resnet101", 44_549_160 - 2_049_000),
        # ResNet-18 without the second block of each stage: per stage C, two 3x3 C->C convs
        # and two BNs (scale and bias), 18 C^2 + 4 C, summed over C = 64, 128, 256, 512.
        ("resnet10", 11_689_512 - 513_000 - sum(18 * c * c + 4 * c for c in (64, 128, 256, 512))),
    ],
)
def test_parameter_counts_match_standard_resnets(name, expected):
    assert _param_count(models.build_encoder(name)) == expected


def test_width_multiplier_widens_stem_and_embedding():
    encoder = models.build_encoder("resnet50", width=2)
    assert models.embedding_dim(encoder) == 4096
    variables = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 128)


@pytest.mark.parametrize(
    "stem,size,expected_spatial",
    [
        ("imagenet", 64, 2),
        ("cifar", 32, 4),
        ("cifar", 28, 4),
        ("stride2", 28, 2),
        ("stride2", 32, 2),
    ],
)
def test_output_shapes_for_every_stem(stem, size, expected_spatial):
    encoder = models.build_encoder("resnet_tiny", stem=stem)
    x = jnp.ones((2, size, size, 3))
    variables = encoder.init(jax.random.key(0), x, train=False)
    features = encoder.apply(variables, x, train=False)
    assert features.shape == (2, models.embedding_dim(encoder)) == (2, 64)
    # Check the spatial size before pooling through the intermediates of the last block.
    _, state = encoder.apply(variables, x, train=False, capture_intermediates=True)
    last = state["intermediates"]["stage4_block1"]["__call__"][0]
    assert last.shape[1:3] == (expected_spatial, expected_spatial)


def test_zero_init_last_bn_scale():
    encoder = models.build_encoder("resnet_tiny", zero_init_last_bn=True)
    params = encoder.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))["params"]
    assert np.all(params["stage1_block1"]["bn2"]["scale"] == 0)
    assert np.all(params["stage1_block1"]["bn1"]["scale"] == 1)


def _assert_conv_paths_agree(x, kernel_size, stride, grad_atol, grad_rtol=1e-7):
    """The CPU path (whichever convolution it picks for this shape) and ``conv_matmul`` itself
    give the native convolution's outputs and input/parameter gradients."""
    native = models.Conv(6, kernel_size, stride, impl="native")
    matmul = models.Conv(6, kernel_size, stride, impl="matmul")
    params = native.init(jax.random.key(2), x)

    def loss(p, x, module):
        return jnp.sum(jnp.sin(module.apply(p, x)))

    def im2col_loss(p, x):
        return jnp.sum(jnp.sin(models.conv_matmul(x, p["params"]["kernel"], stride)))

    kernel = params["params"]["kernel"]
    np.testing.assert_allclose(matmul.apply(params, x), native.apply(params, x), atol=1e-5)
    np.testing.assert_allclose(
        models.conv_matmul(x, kernel, stride), native.apply(params, x), atol=1e-5
    )
    g_native = jax.grad(loss, argnums=(0, 1))(params, x, native)
    g_matmul = jax.grad(loss, argnums=(0, 1))(params, x, matmul)
    g_im2col = jax.grad(im2col_loss, argnums=(0, 1))(params, x)
    for grads in (g_matmul, g_im2col):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=grad_atol, rtol=grad_rtol),
            grads,
            g_native,
        )


@pytest.mark.parametrize("kernel_size,stride", [(1, 1), (1, 2), (3, 1), (3, 2), (7, 2)])
def test_matmul_conv_equals_native_conv_outputs_and_gradients(kernel_size, stride):
    x = jax.random.normal(jax.random.key(1), (2, 11, 11, 5))
    _assert_conv_paths_agree(x, kernel_size, stride, grad_atol=1e-4)


@pytest.mark.parametrize(
    "size,channels,kernel_size,stride",
    [
        # Tiny maps where some taps only ever see padding (pruned): ResNet stage 4 at 32 px.
        (1, 5, 3, 1),
        (1, 5, 3, 2),
        (2, 5, 3, 2),
        (2, 5, 3, 1),
        (2, 5, 1, 2),
        # The 7x7/2 stem at 32 px and odd sizes.
        (32, 3, 7, 2),
        (17, 3, 7, 2),
    ],
)
def test_matmul_conv_fast_paths_equal_native(size, channels, kernel_size, stride):
    x = jax.random.normal(jax.random.key(1), (2, size, size + 1, channels))
    _assert_conv_paths_agree(x, kernel_size, stride, grad_atol=2e-4, grad_rtol=1e-4)


def test_cpu_path_follows_the_conv_plan():
    """The "matmul" path runs each convolution as its plan says (no measured thresholds here)."""

    def traced_primitives(module, x):
        params = module.init(jax.random.key(0), x)
        return {e.primitive.name for e in jax.make_jaxpr(module.apply)(params, x).eqns}

    x = jnp.ones((1, 8, 8, 2))
    key = models.conv_key(8, 8, 2, 4, 3, 1, jnp.float32)
    assert key == (8, 8, 2, 4, 3, 1, "float32")
    for choice in ("native", "matmul"):
        conv = models.Conv(4, 3, 1, impl="matmul", plan=((key, choice),))
        assert models.cpu_conv_choice(key, conv.plan) == choice
        assert ("conv_general_dilated" in traced_primitives(conv, x)) == (choice == "native")
    # A plan for another shape does not apply; the shape keeps the untuned default.
    other = ((models.conv_key(4, 4, 2, 4, 3, 1, jnp.float32), "matmul"),)
    default = "native" if models.native_conv_is_faster(8, 8, 3, 1, jnp.float32) else "matmul"
    assert models.cpu_conv_choice(key, other) == default
    # impl="native" ignores the plan: GPU/TPU always get XLA's convolution.
    conv = models.Conv(4, 3, 1, impl="native", plan=((key, "matmul"),))
    assert "conv_general_dilated" in traced_primitives(conv, x)


def test_encoder_passes_its_plan_to_every_convolution():
    x = jnp.ones((2, 16, 16, 3))
    from byol_jax import cpu_autotune

    shapes = cpu_autotune.encoder_conv_shapes(
        models.build_encoder("resnet_tiny", conv_impl="matmul"), 16, 2
    )
    for choice in ("native", "matmul"):
        plan = tuple((key, choice) for key in shapes)
        encoder = models.build_encoder("resnet_tiny", conv_impl="matmul", conv_plan=plan)
        variables = encoder.init(jax.random.key(0), x)
        apply = functools.partial(encoder.apply, mutable=["batch_stats"])
        eqns = jax.make_jaxpr(apply)(variables, x)
        convs = sum(e.primitive.name == "conv_general_dilated" for e in eqns.jaxpr.eqns)
        # Flax's apply is one jaxpr here (no nested jit); every convolution is listed.
        assert convs == (sum(shapes.values()) if choice == "native" else 0)


def test_live_taps_drop_only_padding():
    # 3x3/1 on a 1x1 map: only the centre tap sees a pixel; on 2x2 with stride 2, taps 1-2.
    assert models._live_taps(1, 3, 1, 1) == (1, 2)
    assert models._live_taps(2, 3, 2, 1) == (1, 3)
    assert models._live_taps(8, 3, 1, 1) == (0, 3)
    assert models._live_taps(32, 7, 2, 3) == (0, 7)


@pytest.mark.parametrize("shape", [(2, 9, 10, 3), (2, 16, 16, 4), (2, 2, 2, 3), (2, 1, 1, 2)])
@pytest.mark.parametrize("after_relu", [False, True])
def test_matmul_max_pool_gradient_equals_native(shape, after_relu):
    # After a ReLU, windows often hold several zeros: the gradient goes to the first maximum,
    # as with XLA's select-and-scatter (not split between ties).
    x = jax.random.normal(jax.random.key(0), shape)
    if after_relu:
        x = jnp.maximum(x, 0.0)

    def loss(x, impl):
        return jnp.sum(jnp.sin(3.0 * models.max_pool_3x3_s2(x, impl)))

    np.testing.assert_array_equal(
        models.max_pool_3x3_s2(x, "matmul"), models.max_pool_3x3_s2(x, "native")
    )
    np.testing.assert_allclose(jax.grad(loss)(x, "matmul"), jax.grad(loss)(x, "native"), atol=1e-6)


def test_matmul_max_pool_equals_native():
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3))
    np.testing.assert_array_equal(
        models.max_pool_3x3_s2(x, "matmul"), models.max_pool_3x3_s2(x, "native")
    )


def test_encoder_implementations_agree_end_to_end():
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    native = models.build_encoder("resnet_tiny", conv_impl="native")
    matmul = models.build_encoder("resnet_tiny", conv_impl="matmul")
    variables = native.init(jax.random.key(1), x)
    out_native, _ = native.apply(variables, x, mutable=["batch_stats"])
    out_matmul, _ = matmul.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(out_matmul, out_native, rtol=1e-4, atol=1e-4)

    # Gradients too: at 32 px the max-pool (custom VJP) and stage 4 on a 1x1 map (pruned taps)
    # take their fast paths.
    def loss(params, module):
        out, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out))

    g_native = jax.grad(loss)(variables["params"], native)
    g_matmul = jax.grad(loss)(variables["params"], matmul)
    # Float summation order differs; compare relative to each gradient's scale.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(b).max()),
        g_matmul,
        g_native,
    )


def test_byol_network_outputs_and_target_has_no_predictor():
    encoder = functools.partial(models.build_encoder, "resnet_tiny", stem="cifar")
    online = models.BYOLNetwork(encoder(), 32, 16, 24, with_predictor=True)
    target = models.BYOLNetwork(encoder(), 32, 16, 24, with_predictor=False)
    x = jnp.ones((3, 16, 16, 3))
    online_vars = online.init(jax.random.key(0), x)
    target_vars = target.init(jax.random.key(0), x)
    out = online.apply(online_vars, x, train=False)
    assert {k: v.shape for k, v in out.items()} == {
        "embedding": (3, 64),
        "projection": (3, 16),
        "prediction": (3, 16),
    }
    assert set(online_vars["params"]) == {"encoder", "projector", "predictor"}
    assert set(target_vars["params"]) == {"encoder", "projector"}
    # Heads: Linear(hidden, bias) → BN → ReLU → Linear(out, no bias).
    projector = online_vars["params"]["projector"]
    assert projector["hidden"]["kernel"].shape == (64, 32) and "bias" in projector["hidden"]
    assert set(projector["output"]) == {"kernel"}


def test_batch_norm_statistics_cover_all_devices():
    """Under pmap with the axis name, BN normalizes with global-batch statistics."""
    n = jax.local_device_count()
    assert n == 8, "conftest requests 8 fake CPU devices"
    head = models.MLPHead(hidden_dim=4, output_dim=3, axis_name="d")
    x = jax.random.normal(jax.random.key(0), (n * 2, 5)) * 3 + 1
    params = head.init(jax.random.key(1), x[:2])
    single = models.MLPHead(hidden_dim=4, output_dim=3, axis_name=None)
    expected, _ = single.apply(params, x, mutable=["batch_stats"])
    mapped = jax.pmap(lambda xs: head.apply(params, xs, mutable=["batch_stats"])[0], axis_name="d")(
        x.reshape(n, 2, 5)
    )
    np.testing.assert_allclose(mapped.reshape(-1, 3), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Released-network parity options: 'SAME' padding, projection shortcuts, zero-init.
# ---------------------------------------------------------------------------------------------


def test_window_pads_symmetric_and_same():
    assert models.window_pads(224, 7, 2, "symmetric") == (3, 3)
    assert models.window_pads(224, 7, 2, "same") == (2, 3)  # the stem at 224 px
    assert models.window_pads(112, 3, 2, "same") == (0, 1)  # the pool, strided 3x3s
    assert models.window_pads(113, 3, 2, "same") == (1, 1)  # odd sizes: symmetric anyway
    assert models.window_pads(56, 3, 1, "same") == (1, 1)
    assert models.window_pads(56, 1, 2, "same") == (0, 0)
    with pytest.raises(ValueError, match="padding must be one of"):
        models.window_pads(8, 3, 1, "reflect")


@pytest.mark.parametrize("impl", ["native", "matmul"])
@pytest.mark.parametrize(("size", "kernel_size", "stride"), [(8, 3, 2), (9, 3, 2), (16, 7, 2)])
def test_same_padding_conv_and_pool_equal_xla_same(impl, size, kernel_size, stride):
    """padding="same" is XLA's own 'SAME' (as Haiku's Conv2D and max_pool use it)."""
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    conv = models.Conv(4, kernel_size, stride, impl=impl, padding="same")
    params = conv.init(jax.random.key(1), x)
    expected = jax.lax.conv_general_dilated(
        x, params["params"]["kernel"], (stride, stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    np.testing.assert_allclose(conv.apply(params, x), expected, atol=1e-5)
    pooled = models.max_pool_3x3_s2(x, impl, "same")
    reference = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
    np.testing.assert_array_equal(pooled, reference)


def test_same_padding_changes_the_encoder_only_on_even_sizes():
    def features(padding, size, impl="native"):
        encoder = models.build_encoder("resnet_tiny", padding=padding, conv_impl=impl)
        x = jax.random.uniform(jax.random.key(3), (2, size, size, 3))
        variables = encoder.init(jax.random.key(0), x, train=False)  # same params for both
        return encoder.apply(variables, x, train=False)

    # 33 px: every strided layer sees an odd size, where 'SAME' is symmetric.
    np.testing.assert_allclose(features("same", 33), features("symmetric", 33), atol=1e-6)
    assert np.abs(features("same", 32) - features("symmetric", 32)).max() > 1e-3
    np.testing.assert_allclose(features("same", 32, "matmul"), features("same", 32), atol=1e-5)


def test_projection_shortcuts_in_every_first_block():
    plain = models.build_encoder("resnet18")
    released = models.build_encoder("resnet18", projection_shortcuts=True)
    # One extra 1x1 conv (64 -> 64) and its BN scale/bias in stage 1: 64*64 + 2*64.
    assert _param_count(released) == _param_count(plain) + 64 * 64 + 2 * 64
    params = jax.eval_shape(lambda: released.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))[
        "params"
    ]
    for stage in range(1, 5):
        assert "shortcut_conv" in params[f"stage{stage}_block1"]
        assert "shortcut_conv" not in params[f"stage{stage}_block2"]
    # Bottleneck stages already project in their first block: ResNet-50 is unchanged.
    r50 = models.build_encoder("resnet50", projection_shortcuts=True)
    assert _param_count(r50) == 25_557_032 - 2_049_000


def test_zero_init_last_bn_of_bottleneck_blocks():
    encoder = models.ResNet(
        stage_sizes=(1, 1, 1, 1), block="bottleneck", base_width=8, zero_init_last_bn=True
    )
    params = encoder.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))["params"]
    for stage in range(1, 5):
        block = params[f"stage{stage}_block1"]
        assert np.all(block["bn3"]["scale"] == 0)
        assert np.all(block["bn1"]["scale"] == 1) and np.all(block["bn2"]["scale"] == 1)
        assert np.all(block["shortcut_bn"]["scale"] == 1)


def test_imagenet_config_selects_the_released_network_and_the_default_only_zero_init():
    from configs import fashion_mnist, imagenet

    model = imagenet.get_config().model
    assert (model.zero_init_last_bn, model.padding, model.projection_shortcuts) == (
        True,
        "same",
        True,
    )
    # The default takes only the zero-initialized residual BN (docs/recipe_study.md).
    default = fashion_mnist.get_config().model
    assert (default.zero_init_last_bn, default.padding, default.projection_shortcuts) == (
        True,
        "symmetric",
        False,
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.padding", "valid", "one of \\('symmetric', 'same'\\)"),
        ("data.train_source_size", -1, "0: use data.source_size"),
    ],
)
def test_new_config_keys_are_validated(key, value, message):
    from byol_jax import validation
    from configs import imagenet

    config = imagenet.get_config()
    validation.validate_config(config, device_count=8)  # the shipped values pass
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(validation.ConfigError, match=message):
        validation.validate_config(config, device_count=8)
