"""Folders of images as datasets (byol_jax.data.folder + the train/eval streams), on tiny
generated folders: nested, mixed formats and sizes, labelled and not, with non-image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from folder_helpers import KINDS, color, expected_rgb, image_bytes, make_classes_folder

from byol_jax import data
from byol_jax.data import folder

tf = pytest.importorskip("tensorflow")

N = 12  # images (and classes) of the classes folder


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    kinds = make_classes_folder(root, N)
    return root, kinds


def _batches(root, n, **kwargs):
    args = dict(data_dir=str(root), batch_size=4, source_size=16, seed=0, folder_labels=True)
    it = data.train_batches("folder", "train", **{**args, **kwargs})
    return [next(it) for _ in range(n)]


def test_listing_is_sorted_nested_and_counts_non_images(classes_dir):
    root, _ = classes_dir
    listing = folder.list_folder(str(root), labelled=True)
    assert listing["layout"] == "classes" and listing["skipped"] == 2
    assert listing["files"] == sorted(listing["files"]) and len(listing["files"]) == N
    assert listing["files"][0] == "cls_00/deeper/img_0.jpg"
    assert listing["label_names"] == [f"cls_{i:02d}" for i in range(N)]
    assert listing["labels"] == list(range(N))
    line = folder.skipped_message(listing)
    assert "12 images in 12 classes" in line and "ignored 2 non-image file(s)" in line
    unlabelled = folder.list_folder(str(root), labelled=False)
    assert unlabelled["layout"] == "flat" and set(unlabelled["labels"]) == {-1}


def test_every_format_becomes_rgb_with_its_colour(classes_dir):
    """Grayscale, CMYK, palette, alpha, BMP and GIF (first frame) all arrive as RGB of the
    colour they were drawn with (JPEG within its rounding), whole and letterboxed."""
    root, kinds = classes_dir
    batches = _batches(root, 3)  # one epoch: 12 images
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(labels) == list(range(N))
    for batch in batches:
        for image, label, valid in zip(batch["image"], batch["label"], batch["valid"], strict=True):
            kind = kinds[label]
            width, height = 10 + 3 * label, 28 - label % 7
            scale = 16 / max(width, height)
            assert tuple(valid) == (round(height * scale), round(width * scale)), kind
            inside = image[: valid[0], : valid[1]].reshape(-1, 3).astype(int)
            tolerance = 3 if "jpeg" in kind else 0
            np.testing.assert_allclose(
                inside.mean(0), expected_rgb(kind, color(label)), atol=tolerance, err_msg=kind
            )
            assert not image[valid[0] :].any() and not image[:, valid[1] :].any()


def test_unlabelled_folder_has_labels_minus_one_and_zero_classes(classes_dir):
    root, _ = classes_dir
    info = data.dataset_info("folder", "train", data_dir=str(root), source_size=16)
    assert (info.num_examples, info.num_classes) == (N, 0)
    batch = _batches(root, 1, folder_labels=False)[0]
    assert (batch["label"] == -1).all()


def test_exact_resume_new_order_each_epoch_and_process_count_independence(classes_dir):
    root, _ = classes_dir
    ref = _batches(root, 9, batch_size=4)  # 3 epochs of 12
    labels = np.concatenate([b["label"] for b in ref]).reshape(3, N)
    assert all(sorted(epoch) == list(range(N)) for epoch in labels)
    assert len({tuple(epoch) for epoch in labels}) == 3  # a fresh order every epoch
    for k in (2, 4, 7):
        resumed = _batches(root, 1, start_step=k)[0]
        for key in ref[k]:
            np.testing.assert_array_equal(resumed[key], ref[k][key])
    # Two processes of batch 2: rows [2i, 2i+2) of every global batch, disjoint files.
    per_process = [
        _batches(root, 9, batch_size=2, process_index=i, process_count=2) for i in (0, 1)
    ]
    for step, batch in enumerate(ref):
        for key in batch:
            joined = np.concatenate([per_process[0][step][key], per_process[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key])
    for epoch in range(3):
        seen = [
            {int(x) for b in p[3 * epoch : 3 * epoch + 3] for x in b["label"]} for p in per_process
        ]
        assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(N))


def test_eval_batches_every_image_once_centre_cropped(classes_dir):
    root, kinds = classes_dir
    seen = []
    for i in range(2):
        batches = list(
            data.eval_batches(
                "folder", "train", data_dir=str(root), batch_size=4, source_size=8,
                process_index=i, process_count=2, folder_labels=True,
            )
        )  # fmt: skip
        assert len(batches) == 2  # 6 each, padded to 8
        for b in batches:
            for image, label in zip(b["image"][b["mask"]], b["label"][b["mask"]], strict=True):
                tolerance = 3 if "jpeg" in kinds[label] else 0
                np.testing.assert_allclose(
                    image.reshape(-1, 3).mean(0),
                    expected_rgb(kinds[label], color(label)),
                    atol=tolerance,
                )
                seen.append(int(label))
    assert sorted(seen) == list(range(N))


def test_held_out_slices_are_disjoint_seeded_and_cover_the_folder(classes_dir):
    root, _ = classes_dir
    train = folder.folder_source(str(root), "train[:75%]", labelled=True)
    held = folder.folder_source(str(root), "train[75%:]", labelled=True)
    assert (train.num_examples, held.num_examples) == (9, 3)
    assert not set(train.paths) & set(held.paths)
    whole = folder.folder_source(str(root), "train")
    assert sorted(train.paths + held.paths) == sorted(whole.paths)
    # Not simply the last classes in sorted order: drawn from a seeded shuffle.
    assert sorted(held.labels.tolist()) != [9, 10, 11]
    with pytest.raises(data.DatasetError, match="Unknown split 'test'"):
        folder.folder_source(str(root), "test")


def test_imagefolder_layout_is_detected(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for label in ("cat", "dog"):
            sub = tmp_path / split / label
            sub.mkdir(parents=True)
            for j in range(count):
                (sub / f"{j}.png").write_bytes(image_bytes("png", (8, 6), (j, 0, 0)))
    listing = folder.list_folder(str(tmp_path), labelled=False)
    assert listing["layout"] == "imagefolder" and listing["label_names"] == ["cat", "dog"]
    test = folder.folder_source(str(tmp_path), "test")
    assert test.num_examples == 4 and test.labels.tolist() == [0, 0, 1, 1]
    assert all("/test/" in p for p in test.paths)
    info = data.dataset_info("folder", "train", data_dir=str(tmp_path), source_size=8)
    assert (info.num_examples, info.num_classes) == (6, 2)


def test_file_list_is_stored_in_the_workdir_and_reused(tmp_path):
    root, workdir = tmp_path / "images", tmp_path / "work"
    make_classes_folder(root, 6, with_junk=False)
    line = data.prepare_dataset(
        "folder", data_dir=str(root), folder_labels=True, workdir=str(workdir)
    )
    assert "6 images in 6 classes" in line
    stored = json.loads((workdir / folder.FILE_LIST).read_text())
    assert stored["files"] == folder.list_folder(str(root), True)["files"]
    names = (workdir / folder.LABEL_NAMES).read_text().split()
    assert names == [f"cls_{i:02d}" for i in range(6)]
    # A file added later is not seen by runs of this workdir (resume reads the same order) ...
    (root / "cls_05" / "late.png").write_bytes(image_bytes("png", (8, 8), (1, 2, 3)))
    info = data.dataset_info(
        "folder", "train", data_dir=str(root), source_size=8, workdir=str(workdir)
    )
    assert info.num_examples == 6
    # ... and the stored list is idempotent: preparing again does not relist.
    data.prepare_dataset("folder", data_dir=str(root), folder_labels=True, workdir=str(workdir))
    assert json.loads((workdir / folder.FILE_LIST).read_text()) == stored
    fresh = folder.list_folder(str(root), True)
    assert len(fresh["files"]) == 7


def test_evaluation_reads_the_runs_stored_list_not_todays_folder(tmp_path):
    from byol_jax import train_data
    from configs import folder as folder_config

    root, workdir = tmp_path / "images", tmp_path / "work"
    make_classes_folder(root, 6, with_junk=False)
    data.prepare_dataset("folder", data_dir=str(root), folder_labels=True, workdir=str(workdir))
    # A class added after the run started sorts first: listed again, it would shift every
    # class index and the held-out slices.
    (root / "aaa_late").mkdir()
    (root / "aaa_late" / "late.png").write_bytes(image_bytes("png", (8, 8), (1, 2, 3)))
    config = folder_config.get_config()
    config.data.update(folder=str(root), folder_labels=True, source_size=16)
    splits = ("train[:50%]", "train[50%:]")
    seen = []
    for stored in (str(workdir), None):
        evals = train_data.eval_data(config, num_classes=6, workdir=stored)
        labels = [
            int(label)
            for split in splits
            for batch in evals.read_shard(split, 0, 1, 4)
            for label, real in zip(batch["label"], batch["mask"], strict=True)
            if real
        ]
        seen.append((sum(evals.num_examples(split) for split in splits), sorted(labels)))
    assert seen[0] == (6, list(range(6)))  # the run's own images and classes
    assert seen[1] == (7, list(range(7)))  # without the workdir: today's folder


def test_a_run_trained_unlabelled_is_evaluated_with_labels_from_the_folder(tmp_path):
    root, workdir = tmp_path / "images", tmp_path / "work"
    make_classes_folder(root, 6, with_junk=False)
    data.prepare_dataset("folder", data_dir=str(root), folder_labels=False, workdir=str(workdir))
    assert json.loads((workdir / folder.FILE_LIST).read_text())["layout"] == "flat"
    # --mode=knn/linear_eval with data.folder_labels=True on that workdir: the stored flat
    # list has no classes, so the folder's own labels are read.
    for labelled, classes in ((True, 6), (False, 0)):
        info = data.dataset_info(
            "folder",
            "train",
            data_dir=str(root),
            source_size=8,
            folder_labels=labelled,
            workdir=str(workdir),
        )
        assert (info.num_examples, info.num_classes) == (6, classes)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_alone_decodes(tmp_path, kind):
    (tmp_path / f"x.{kind}.{'jpg' if 'jpeg' in kind else kind.split('_')[-1]}").write_bytes(
        image_bytes(kind, (5, 7), (200, 100, 50))
    )
    batch = _batches(tmp_path, 1, batch_size=1, folder_labels=False)[0]
    assert batch["image"].shape == (1, 16, 16, 3) and tuple(batch["valid"][0]) == (16, 11)
