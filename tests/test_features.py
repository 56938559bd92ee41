"""The one feature path: sharded, padded embedding equals the encoder applied in one piece."""

import jax
import numpy as np
import pytest

from byol_jax import features, models, parallel

VIEW = features.View(8, 1.0, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def tiny():
    encoder = models.build_encoder("resnet_tiny", axis_name=parallel.AXIS_NAME)
    return encoder, features.random_variables(encoder, 8, seed=3)


def test_embed_images_matches_unsharded_apply_for_any_count(tiny):
    encoder, variables = tiny
    images = np.random.default_rng(0).integers(0, 256, (21, 10, 10, 3), dtype=np.uint8)
    views = features.eval_views(images, features.View(8, 0.8, VIEW.mean, VIEW.std))
    expected = np.asarray(encoder.apply(variables, views, train=False))
    view = features.View(8, 0.8, VIEW.mean, VIEW.std)
    # 21 images over 8 devices in batches of 8: padding inside and at the end.
    got = features.embed_images(encoder, variables, images, view, batch_size=8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Variables already on the devices (as in the training state) give the same rows.
    replicated = parallel.replicate(variables)
    again = features.embed_images(encoder, replicated, images, view, replicated=True)
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5)


def test_encoder_spec_round_trips_and_knows_its_width():
    spec = features.EncoderSpec(
        encoder="resnet18", width=1, base_width=32, stem="imagenet", dtype="float32",
        image_size=28, source_size=28, crop_fraction=1.0, mean=[0.3] * 3, std=[0.35] * 3,
    )  # fmt: skip
    assert spec.embedding_dim == 256 and spec.view == features.View(
        28, 1.0, (0.3,) * 3, (0.35,) * 3
    )
    assert features.EncoderSpec.from_json(spec.to_json()) == spec
    with pytest.raises(features.SpecError, match="unsupported encoder format"):
        features.EncoderSpec.from_json({**spec.to_json(), "format": "other"})


def test_encoder_variables_selects_the_online_encoder_only():
    state = {
        "online_params": {"encoder": {"w": 1}, "projector": {"w": 2}},
        "online_batch_stats": {"encoder": {"m": 3}},
        "target_params": {"encoder": {"w": 4}},
    }
    assert features.encoder_variables(state) == {"params": {"w": 1}, "batch_stats": {"m": 3}}
    assert jax.tree.leaves(features.encoder_variables(state)) == [3, 1]
