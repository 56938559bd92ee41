"""LARS masks on a real ResNet, one update against NumPy, and the LR schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol_jax import models, optim


def _paths(tree, predicate):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p) for p, v in flat if predicate(p, v)}


def test_mask_excludes_exactly_biases_and_batch_norm_params():
    encoder = models.build_encoder("resnet18", stem="cifar")
    net = models.BYOLNetwork(encoder, 64, 16, 64)
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))[
        "params"
    ]
    mask = optim.decay_mask(params)
    flat_mask = dict(
        (jax.tree_util.keystr(p), m) for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]
    )

    # Independent criterion by path: BN modules are named *bn*; biases end in "bias".
    def excluded(path, _):
        names = [getattr(k, "key", "") for k in path]
        return names[-1] == "bias" or any("bn" in n for n in names[:-1])

    excluded_paths = _paths(params, excluded)
    assert {p for p, m in flat_mask.items() if not m} == excluded_paths
    assert all(p.endswith("['kernel']") for p, m in flat_mask.items() if m)
    # ResNet-18: 20 BN layers in the encoder (2 scale/bias each) + head BNs and dense biases.
    assert len([p for p in excluded_paths if "encoder" in p]) == 2 * 20
    assert len(excluded_paths) == 40 + 2 * (3)  # projector & predictor: BN scale+bias, bias


def _numpy_lars_step(w, g, m, lr, wd, eta, momentum, decay):
    if decay:
        g = g + wd * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        ratio = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        g = g * ratio
    m = momentum * m + g
    return w - lr * m, m


def test_one_and_two_updates_match_numpy_with_changing_lr():
    rng = np.random.default_rng(0)
    params = {
        "dense": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))},
        "bn": {"scale": np.ones(3), "bias": np.zeros(3)},
    }
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    lrs = [0.5, 2.0]  # a changing LR is where optax.lars and the released order differ
    schedule = lambda step: jnp.asarray(lrs)[step]
    opt = optim.lars(schedule, weight_decay=1e-2, momentum=0.9, trust_coefficient=1e-3)
    state = opt.init(params)
    expected = jax.tree.map(np.asarray, params)
    momenta = jax.tree.map(np.zeros_like, expected)
    mask = optim.decay_mask(params)
    for lr in lrs:
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        flat_w, treedef = jax.tree.flatten(expected)
        results = [
            _numpy_lars_step(w, np.asarray(g), m, lr, 1e-2, 1e-3, 0.9, d)
            for w, g, m, d in zip(
                flat_w,
                jax.tree.leaves(grads),
                jax.tree.leaves(momenta),
                jax.tree.leaves(mask),
                strict=True,
            )
        ]
        expected = jax.tree.unflatten(treedef, [r[0] for r in results])
        momenta = jax.tree.unflatten(treedef, [r[1] for r in results])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), params, expected)


@pytest.mark.parametrize("schedule", [True, False])
def test_fused_lars_equals_the_optax_chain_on_a_resnet_tree(schedule):
    """The fused update gives the reference chain's updates and states, step after step."""
    net = models.BYOLNetwork(models.build_encoder("resnet_tiny", stem="cifar"), 32, 16, 24)
    params = net.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)))["params"]
    # A zero kernel takes the trust ratio's zero-norm branch (ratio 1).
    params["encoder"]["stem_conv"]["kernel"] = jnp.zeros_like(
        params["encoder"]["stem_conv"]["kernel"]
    )
    lr = (lambda count: jnp.asarray([0.5, 2.0, 0.1])[count]) if schedule else 0.3
    fused = optim.lars(lr, weight_decay=1e-2, momentum=0.9, trust_coefficient=1e-3)
    chain = optim._lars_chain(lr, 1e-2, 0.9, 1e-3, optim.decay_mask)
    fused_state, chain_state = fused.init(params), chain.init(params)
    assert jax.tree.structure(fused_state) == jax.tree.structure(chain_state)
    fused_params, chain_params = params, params
    fused_update = jax.jit(fused.update)
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    for step in range(3):
        grads = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape), params)
        if step == 0:  # A zero gradient of a decayed kernel: the other zero-norm branch.
            grads["projector"]["output"]["kernel"] = jnp.zeros_like(
                grads["projector"]["output"]["kernel"]
            )
        updates, fused_state = fused_update(grads, fused_state, fused_params)
        expected, chain_state = chain.update(grads, chain_state, chain_params)
        fused_params = optax.apply_updates(fused_params, updates)
        chain_params = optax.apply_updates(chain_params, expected)
        for a, b in zip(
            jax.tree.leaves((updates, fused_state, fused_params)),
            jax.tree.leaves((expected, chain_state, chain_params)),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_learning_rate_schedule_scales_warms_up_and_decays():
    schedule = optim.learning_rate_schedule(0.2, batch_size=512, total_steps=100, warmup_steps=10)
    peak = 0.2 * 512 / 256
    np.testing.assert_allclose(schedule(0), 0.0)
    np.testing.assert_allclose(schedule(5), peak / 2, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), peak, rtol=1e-6)
    np.testing.assert_allclose(schedule(55), peak / 2, rtol=1e-5)
    np.testing.assert_allclose(schedule(100), 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.learning_rate_schedule(0.2, 256, total_steps=10, warmup_steps=10)


def test_warmup_is_the_released_10_epochs_at_every_imagenet_preset_and_capped_for_short_runs():
    from byol_jax import train
    from configs import fashion_mnist, imagenet, smoke

    imagenet_train = 1_281_167
    for epochs in imagenet.PRESETS:
        config = imagenet.get_config(f"epochs={epochs}")
        assert train.warmup_steps(config, imagenet_train) == 10 * (imagenet_train // 4096)
    # num_steps shortens a run: warmup keeps to the config's share of it (a quarter, a tenth).
    short = imagenet.get_config("epochs=40")
    short.num_steps = 1000
    assert train.warmup_steps(short, imagenet_train) == 250
    short.max_warmup_fraction = 0.1
    assert train.warmup_steps(short, imagenet_train) == 100
    # Fashion-MNIST as measured: 0.25 epochs (234 steps), cut to a tenth of :quick's 1875.
    assert train.warmup_steps(fashion_mnist.get_config(), 60_000) == 234
    assert train.warmup_steps(fashion_mnist.get_config("quick"), 60_000) == 187
    assert train.warmup_steps(smoke.get_config(), 60_000) < train.total_steps(
        smoke.get_config(), 60_000
    )
