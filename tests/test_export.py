"""Encoder export/loading against a real (two-step) smoke pretraining run."""

import json
import os

import jax
import numpy as np
import pytest
from launch_helpers import smoke_eval_batch

import byol_jax
from byol_jax import checkpoint, export, features, train, train_evals, workdir_config
from configs import smoke


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = smoke.get_config()
    config.num_steps = 2
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    train.train_and_evaluate(config, workdir)
    batch = smoke_eval_batch(config.data.eval_split, 24)
    return config, workdir, batch["image"], batch["label"]


def _training_embeddings(config, workdir, images):
    """The embedding as pretraining's own evaluation computes it (features.eval_views)."""
    experiment = train.build_experiment(config, num_classes=10, num_train_examples=256)
    template = jax.eval_shape(lambda: train.initial_state(experiment, config.seed))
    state, step = checkpoint.restore_latest(checkpoint.create_manager(workdir), template)
    assert step == config.num_steps
    data = config.data
    views = features.eval_views(
        images,
        features.View(data.image_size, data.eval_crop_fraction, tuple(data.mean), tuple(data.std)),
    )
    variables = {"params": state.online_params, "batch_stats": state.online_batch_stats}
    apply = jax.jit(lambda v, x: experiment.online_net.apply(v, x, train=False)["embedding"])
    return np.asarray(apply(variables, views))


def test_load_encoder_matches_training_encoder(run):
    config, workdir, images, _ = run
    embed = byol_jax.load_encoder(workdir)
    out = embed(images)
    assert out.shape == (len(images), embed.spec.embedding_dim) and out.dtype == np.float32
    expected = _training_embeddings(config, workdir, images)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert embed.spec.step == config.num_steps and embed.spec.image_size == 16


def test_restore_encoder_variables_of_either_network(run):
    config, workdir, _, _ = run
    experiment = train.build_experiment(config, num_classes=10, num_train_examples=256)
    template = jax.eval_shape(lambda: train.initial_state(experiment, config.seed))
    state, _ = checkpoint.restore_latest(checkpoint.create_manager(workdir), template)
    for network in export.NETWORKS:
        variables, step = export.restore_encoder_variables(workdir, network=network)
        assert step == config.num_steps
        expected = {
            "params": getattr(state, f"{network}_params")["encoder"],
            "batch_stats": getattr(state, f"{network}_batch_stats")["encoder"],
        }
        assert jax.tree.structure(variables) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))
    # Two steps in, the online weights have moved away from their moving average.
    online, _ = export.restore_encoder_variables(workdir)
    target, _ = export.restore_encoder_variables(workdir, network="target")
    pairs = zip(jax.tree.leaves(online["params"]), jax.tree.leaves(target["params"]), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)
    with pytest.raises(ValueError, match="network must be one of"):
        export.restore_encoder_variables(workdir, network="predictor")


def test_export_round_trip_is_exact(run, tmp_path):
    _, workdir, images, _ = run
    out_dir = export.export_encoder(workdir, str(tmp_path / "exported"))
    assert sorted(os.listdir(out_dir)) == [export.SPEC_FILE, export.ENCODER_FILE]
    with open(os.path.join(out_dir, export.SPEC_FILE)) as f:
        spec = json.load(f)
    assert spec["encoder"] == "resnet_tiny" and spec["image_size"] == 16
    assert spec["format"] == export.FORMAT

    _, from_workdir, spec_a = export.read_encoder(workdir)
    _, from_export, spec_b = export.read_encoder(os.path.join(out_dir, export.ENCODER_FILE))
    assert spec_a == spec_b
    assert jax.tree.structure(from_workdir) == jax.tree.structure(from_export)
    for a, b in zip(jax.tree.leaves(from_workdir), jax.tree.leaves(from_export), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        export.load_encoder(out_dir)(images), export.load_encoder(workdir)(images)
    )


def test_loaded_encoder_accepts_any_batch(run):
    _, workdir, images, _ = run
    embed = export.load_encoder(workdir)
    reference = embed(images)
    # Any count, including a partial last batch and none at all.
    np.testing.assert_allclose(embed(images[:5]), reference[:5], rtol=1e-5, atol=1e-6)
    assert embed(images[:0]).shape == (0, reference.shape[1])
    # Floats in [0, 1] and single-channel images are the same pictures.
    np.testing.assert_allclose(embed(images / 255.0), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embed(images[..., :1]), reference, rtol=1e-5, atol=1e-6)
    # Other sizes are centre-cropped and resized to the training resolution.
    assert embed(np.zeros((3, 20, 24, 3), np.uint8)).shape == (3, reference.shape[1])
    with pytest.raises(ValueError):
        embed(np.zeros((2, 8, 8, 2), np.uint8))


def test_embed_split_writes_npy(run, tmp_path):
    config, workdir, images, labels = run
    out = export.embed_split(workdir, config.data.dataset, "test[:24]", str(tmp_path / "emb"))
    embeddings = np.load(out["embeddings"])
    assert out["embeddings"].endswith("emb.npy") and embeddings.shape == (24, 64)
    np.testing.assert_array_equal(np.load(out["labels"]), labels)
    joined, joined_labels = export.read_embeddings(str(tmp_path / "emb"))
    np.testing.assert_array_equal(joined, embeddings)
    np.testing.assert_array_equal(joined_labels, labels)
    np.testing.assert_allclose(
        embeddings, export.load_encoder(workdir)(images), rtol=1e-5, atol=1e-5
    )


def test_embed_split_on_several_processes_writes_parts_that_join_to_the_whole(run, tmp_path):
    config, workdir, images, labels = run
    split, out = "test[:24]", str(tmp_path / "emb.npy")
    # Processes 0..2 of a 3-process job, one after another: each embeds only its own part.
    shapes = [
        export.embed_split(
            workdir, config.data.dataset, split, out, process_index=p, process_count=3
        )["shape"]
        for p in range(3)
    ]
    assert shapes == [[8, 64]] * 3
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"emb{kind}-0000{p}-of-00003.npy" for kind in ("", "_labels") for p in range(3)
    )
    embeddings, joined_labels = export.read_embeddings(out)
    np.testing.assert_array_equal(joined_labels, labels)
    np.testing.assert_allclose(
        embeddings, export.load_encoder(workdir)(images), rtol=1e-5, atol=1e-5
    )
    os.remove(tmp_path / "emb-00001-of-00003.npy")
    with pytest.raises(FileNotFoundError, match="no complete embeddings"):
        export.read_embeddings(out)


def test_bad_path_is_explained(tmp_path):
    with pytest.raises(export.ExportError, match="neither"):
        export.load_encoder(str(tmp_path))


def test_evaluation_modes_run_the_config_evaluators_on_the_workdir(run, tmp_path):
    config, workdir, _, _ = run
    config = config.copy_and_resolve_references()
    config.data.train_split, config.data.eval_split = "train[:64]", "test[:32]"
    config.evals.linear.update(augment=False, epochs=2, batch_size=32)
    config.evals.knn.update(k=10, train_split="", test_split="")
    config.evals.table.update(knn_ks=(10,), l2_grid=(1e-2,))
    linear = train_evals.evaluate_workdir(config, workdir, "linear")
    with open(os.path.join(workdir, "eval_linear.json")) as f:
        written = json.load(f)
    assert written["metrics"] == linear["linear"] and written["pretraining_step"] == 2
    assert 0.0 <= written["metrics"]["linear_top1"] <= 1.0
    assert written["details"]["num_test_examples"] == 32
    assert written["details"]["settings"]["precomputed_features"] is True

    knn = train_evals.evaluate_workdir(config, workdir, "knn")["knn"]
    # The table (--mode=baselines): its kNN column is the same evaluation as --mode=knn.
    table = train_evals.evaluate_workdir(config, workdir, "baselines")["table"]
    assert {k.split("/")[0] for k in table} == {
        "table_byol",
        "table_random_init",
        "table_raw_pixels",
    }
    assert table["table_byol/knn10_top1"] == pytest.approx(knn["knn_accuracy"])


def test_workdir_without_encoder_json_gets_one_from_a_matching_config(run, tmp_path):
    import shutil

    config, workdir, images, _ = run
    old = str(tmp_path / "old")
    shutil.copytree(workdir, old)
    os.remove(os.path.join(old, export.SPEC_FILE))  # as written by earlier versions
    with pytest.raises(export.ExportError, match="has no encoder.json"):
        export.read_encoder(old)
    changed = config.copy_and_resolve_references()
    changed.model.width = 2
    with pytest.raises(workdir_config.ConfigConflictError, match="model.width"):
        workdir_config.ensure_encoder_spec(changed, old)
    workdir_config.ensure_encoder_spec(config, old)
    np.testing.assert_array_equal(
        export.load_encoder(old)(images), export.load_encoder(workdir)(images)
    )


# Orbax's failed read leaves an asyncio callback behind; it is noise, not a test failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_newest_checkpoint_is_skipped(run, tmp_path):
    import shutil

    _, workdir, images, _ = run
    copy = str(tmp_path / "workdir")
    shutil.copytree(workdir, copy)
    checkpoints = checkpoint.checkpoint_dir(copy)
    shutil.copytree(os.path.join(checkpoints, "2"), os.path.join(checkpoints, "1"))
    for root, _, files in os.walk(os.path.join(checkpoints, "2")):
        for name in files:
            if "manifest" in name or root.endswith("/d"):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    _, variables, spec = export.read_encoder(copy)
    assert spec.step == 1
    _, reference, _ = export.read_encoder(workdir)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)
