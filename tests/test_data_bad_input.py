"""Bad input on the folder route: clear one-line errors, or counted skips under
``max_bad_records`` (every case on generated files)."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
import pytest
from folder_helpers import color, image_bytes
from PIL import Image

from byol_jax import data
from byol_jax.data import decode, folder

tf = pytest.importorskip("tensorflow")


def _stream(root, batch_size=4, **kwargs):
    args = dict(data_dir=str(root), batch_size=batch_size, source_size=16, seed=0)
    return data.train_batches("folder", "train", **{**args, **kwargs})


def _good_folder(root, n):
    """``n`` good PNGs in class folders c00.. (label = index), for telling what was skipped."""
    for i in range(n):
        (root / f"c{i:02d}").mkdir(parents=True)
        (root / f"c{i:02d}" / "x.png").write_bytes(image_bytes("png", (12, 9), color(i)))


def test_missing_empty_and_imageless_folders_are_one_line_errors(tmp_path):
    cases = {
        "missing": (tmp_path / "nope", "is not a folder"),
        "empty": (tmp_path / "empty", "is empty"),
        "junk": (tmp_path / "junk", "has no images, only 2 other file"),
    }
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    (tmp_path / "junk" / "b.tiff").write_bytes(b"II*\x00")
    for path, message in cases.values():
        with pytest.raises(data.DatasetError, match=message) as error:
            data.dataset_info("folder", "train", data_dir=str(path), source_size=8)
        assert "\n" not in str(error.value)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(image_bytes("png", (4, 4), (1, 2, 3)))
    with pytest.raises(data.DatasetError, match="folder_labels=True but .* no subfolders"):
        folder.list_folder(str(tmp_path / "flat"), labelled=True)


@pytest.mark.parametrize(
    "name, content",
    [
        ("truncated.jpg", image_bytes("jpeg", (64, 48), (9, 9, 9))[:300]),
        ("garbage.jpg", b"this is not a jpeg at all" * 10),
        ("zero.png", b""),
        ("truncated.png", image_bytes("png", (40, 40), (1, 2, 3))[:60]),
    ],
)
def test_damaged_files_fail_clearly_or_are_counted_and_skipped(tmp_path, caplog, name, content):
    _good_folder(tmp_path, 7)
    (tmp_path / "c03" / name).write_bytes(content)  # the 8th file, label 3 as well
    with pytest.raises(data.DatasetError, match="failed: .*data.max_bad_records > 0") as error:
        batches = _stream(tmp_path, batch_size=8, folder_labels=True)
        next(batches)
    assert "\n" not in str(error.value)
    if not content.startswith((b"\xff\xd8", b"\x89PNG")):  # not even a header: named
        assert f"c03/{name}" in str(error.value)
    with caplog.at_level(logging.WARNING):
        two_epochs = _stream(tmp_path, batch_size=7, folder_labels=True, max_bad_records=2)
        labels = [x for _ in range(2) for x in next(two_epochs)["label"].tolist()]
    assert sorted(labels) == sorted(list(range(7)) * 2)  # 16 positions, the bad file twice
    assert "skipped 2 undecodable record(s)" in caplog.text
    with pytest.raises(data.DatasetError, match="2 records could not be decoded"):
        capped = _stream(tmp_path, batch_size=7, folder_labels=True, max_bad_records=1)
        for _ in range(3):
            next(capped)  # 21 records need a third epoch: 2 (or 3) bad ones > 1


def test_a_file_that_vanishes_after_listing_is_counted(tmp_path, caplog):
    _good_folder(tmp_path, 8)
    workdir = tmp_path / "work"
    data.prepare_dataset("folder", data_dir=str(tmp_path), folder_labels=True, workdir=str(workdir))
    (tmp_path / "c05" / "x.png").unlink()  # listed, then gone
    with pytest.raises(data.DatasetError, match="c05/x.png"):
        next(_stream(tmp_path, batch_size=8, folder_labels=True, workdir=str(workdir)))
    with caplog.at_level(logging.WARNING):
        batch = next(
            _stream(tmp_path, batch_size=7, folder_labels=True, workdir=str(workdir),
                    max_bad_records=3)
        )  # fmt: skip
    assert sorted(batch["label"].tolist()) == [0, 1, 2, 3, 4, 6, 7]
    assert "skipped 1 undecodable record(s)" in caplog.text


def test_a_20000_pixel_jpeg_is_decoded_at_one_eighth(tmp_path):
    big = Image.new("RGB", (20000, 15000), (200, 30, 90))
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=50)
    del big
    (tmp_path / "big.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "small.png").write_bytes(image_bytes("png", (20, 10), (5, 5, 5)))
    batch = next(_stream(tmp_path, batch_size=2, source_size=384))
    by_size = {tuple(v): img for v, img in zip(batch["valid"], batch["image"], strict=True)}
    assert set(by_size) == {(288, 384), (192, 384)}
    colour = by_size[(288, 384)][:288].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(colour, (200, 30, 90), atol=3)
    # The decode itself stayed at 1/8 scale: 2500 x 1875 before the final resize.
    image = decode.decode_for_size(tf.constant((tmp_path / "big.jpg").read_bytes()), 384)
    assert tuple(image.shape) == (1875, 2500, 3)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` with a tiny, truncated pixel stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\x00" * 100)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    )  # fmt: skip


def test_a_huge_png_is_refused_before_decoding(tmp_path):
    (tmp_path / "huge.png").write_bytes(_png_header_only(20000, 20000))
    (tmp_path / "ok.png").write_bytes(image_bytes("png", (20, 10), (5, 5, 5)))
    with pytest.raises(data.DatasetError, match="too large to decode"):
        next(_stream(tmp_path, batch_size=2))
    batch = next(_stream(tmp_path, batch_size=1, max_bad_records=1))
    assert tuple(batch["valid"][0]) == (8, 16)


def test_eval_on_a_damaged_file_is_a_one_line_error(tmp_path):
    _good_folder(tmp_path, 3)
    (tmp_path / "c01" / "bad.jpg").write_bytes(b"")
    with pytest.raises(data.DatasetError, match="failed") as error:
        list(
            data.eval_batches(
                "folder", "train", data_dir=str(tmp_path), batch_size=4, source_size=8
            )
        )
    assert "\n" not in str(error.value)
