"""``launch.py`` on a folder of images, as a user runs it: pretraining with labels from
subfolders, the stored file list, resume to the same state; unlabelled folders skip the
evaluators with one line; two processes read disjoint files and match one process."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
from folder_helpers import image_bytes
from launch_helpers import SMOKE, free_port, restore_smoke_state, start_launch

from byol_jax.data import folder


def _make_folder(root, classes=4, per_class=12):
    """Mixed formats and sizes in class subfolders, some nested, plus a non-image file."""
    kinds = ("jpeg", "png", "gray_jpeg", "gif", "bmp", "rgba_png")
    rng = np.random.default_rng(0)
    for c in range(classes):
        for j in range(per_class):
            sub = root / f"class_{c}" / ("nested" if j % 4 == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            kind = kinds[(c + j) % len(kinds)]
            size = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
            rgb = tuple(int(x) for x in rng.integers(0, 256, 3))
            ext = {"gray_jpeg": "jpg", "rgba_png": "png", "jpeg": "jpg"}.get(kind, kind)
            (sub / f"{j}.{ext}").write_bytes(image_bytes(kind, size, rgb))
    (root / "notes.txt").write_text("ignored")


def _args(images, *extra):
    return [
        f"--config={SMOKE}",
        "--config.data.dataset=folder",
        f"--config.data.folder={images}",
        "--config.data.train_split=train",
        "--config.data.eval_split=train[75%:]",
        *extra,
    ]


def _run(workdir, *args, **env):
    process = start_launch(workdir, *args, JAX_PLATFORMS="cpu", **env)
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output
    return output


def test_launch_on_a_labelled_folder_then_resume_reproduces_the_run(tmp_path):
    images, full = tmp_path / "images", tmp_path / "full"
    _make_folder(images)
    output = _run(full, *_args(images, "--config.data.folder_labels=True"))
    assert "48 images in 4 classes (classes layout); ignored 1 non-image file(s)" in output
    summary = json.loads((full / "summary.json").read_text())
    assert summary["step"] == 6 and summary["probe_examples"] == 12  # train[75%:] of 48
    assert (full / folder.LABEL_NAMES).read_text().split() == [f"class_{c}" for c in range(4)]
    stored = json.loads((full / folder.FILE_LIST).read_text())
    assert len(stored["files"]) == 48 and stored["files"] == sorted(stored["files"])

    # Stopped after its step-3 checkpoint, the same launch resumes there and ends bitwise equal,
    # even though the folder gained an image meanwhile (the stored list fixes the data).
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    (images / "class_0" / "late.png").write_bytes(image_bytes("png", (20, 20), (1, 2, 3)))
    output = _run(resumed, *_args(images, "--config.data.folder_labels=True"))
    assert "resuming from step 3 of 6" in output
    a, _ = restore_smoke_state(full, 6)
    b, _ = restore_smoke_state(resumed, 6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_unlabelled_folder_skips_the_evaluators_with_one_line(tmp_path):
    images = tmp_path / "images"
    _make_folder(images, classes=2, per_class=8)
    output = _run(tmp_path / "work", *_args(images, "--config.num_steps=2"))
    skipped = [line for line in output.splitlines() if line.startswith("evaluators skipped")]
    assert len(skipped) == 1 and "has no labels" in skipped[0], output
    assert "folder_labels=True" in skipped[0]
    assert json.loads((tmp_path / "work" / "summary.json").read_text())["step"] == 2


def test_two_processes_on_a_folder_match_one_process(tmp_path):
    images, two, one = tmp_path / "images", tmp_path / "two", tmp_path / "one"
    _make_folder(images)
    args = _args(images, "--config.data.folder_labels=True", "--config.num_steps=4",
                 "--config.checkpoint_every_steps=4")  # fmt: skip
    port = free_port()
    pair = [
        start_launch(
            two, *args, f"--coordinator_address=localhost:{port}", "--num_processes=2",
            f"--process_id={i}", JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
        )
        for i in range(2)
    ]  # fmt: skip
    single = start_launch(
        one, *args, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )
    outputs = [p.communicate(timeout=900)[0] for p in (*pair, single)]
    for p, out in zip((*pair, single), outputs, strict=True):
        assert p.returncode == 0, out
    # Process 0 listed the folder once; the other read that list (one line, from the chief).
    assert "48 images in 4 classes" in outputs[0] and "48 images" not in outputs[1]
    digests = json.loads((two / "summary.json").read_text())["state_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # Same global batches (disjoint rows per process, checked batch by batch in
    # test_data_folder.py): the same trajectory as one process, to float tolerance.
    a, b = restore_smoke_state(two, 4)[0], restore_smoke_state(one, 4)[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=5e-5)
