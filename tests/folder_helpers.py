"""Tiny generated image folders for the data-layer tests (nested, mixed formats and sizes)."""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image


def color(i: int) -> tuple[int, int, int]:
    """A distinct, JPEG-robust constant colour for image ``i`` (channels far from each other)."""
    return ((40 * i + 20) % 256, (90 * i + 60) % 256, (150 * i + 100) % 256)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def image_bytes(kind: str, size: tuple[int, int], rgb: tuple[int, int, int]) -> bytes:
    """One constant-colour image of ``kind`` ('jpeg', 'gray_jpeg', 'cmyk_jpeg', 'png',
    'rgba_png', 'palette_png', 'bmp', 'gif') and ``size`` (width, height)."""
    plain = Image.new("RGB", size, rgb)
    if kind == "jpeg":
        return encode(plain, "JPEG", quality=95)
    if kind == "gray_jpeg":
        return encode(plain.convert("L"), "JPEG", quality=95)
    if kind == "cmyk_jpeg":
        return encode(plain.convert("CMYK"), "JPEG", quality=95)
    if kind == "png":
        return encode(plain, "PNG")
    if kind == "rgba_png":
        rgba = plain.convert("RGBA")
        rgba.putalpha(Image.new("L", size, 77))
        return encode(rgba, "PNG")
    if kind == "palette_png":
        return encode(plain.convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    if kind == "bmp":
        return encode(plain, "BMP")
    if kind == "gif":  # two frames: the first must be used
        adaptive = Image.Palette.ADAPTIVE  # exact colours, no dithering
        black = Image.new("RGB", size, (0, 0, 0))
        frames = [plain.convert("P", palette=adaptive), black.convert("P", palette=adaptive)]
        return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    raise ValueError(kind)


KINDS = ("jpeg", "gray_jpeg", "cmyk_jpeg", "png", "rgba_png", "palette_png", "bmp", "gif")
EXTENSIONS = {"jpeg": "jpg", "gray_jpeg": "jpeg", "cmyk_jpeg": "JPG", "png": "png",
              "rgba_png": "png", "palette_png": "PNG", "bmp": "bmp", "gif": "gif"}  # fmt: skip


def expected_rgb(kind: str, rgb: tuple[int, int, int]) -> np.ndarray:
    """What a decoder should return for a constant ``rgb`` image stored as ``kind``."""
    if kind == "gray_jpeg":
        gray = Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0))
        return np.array([gray] * 3)
    return np.array(rgb)


def make_classes_folder(root: pathlib.Path, n: int, with_junk: bool = True) -> list[str]:
    """``n`` class subfolders (nested deeper for some), one image each, formats and sizes
    cycling; image i (class ``cls_{i:02d}``) has colour ``color(i)``. Returns the kinds."""
    kinds = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        size = (10 + 3 * i, 28 - i % 7)  # width, height: non-square, varying
        sub = root / f"cls_{i:02d}" / ("deeper" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img_{i}.{EXTENSIONS[kind]}").write_bytes(image_bytes(kind, size, color(i)))
        kinds.append(kind)
    if with_junk:
        (root / "README.txt").write_text("not an image")
        (root / "cls_00" / "labels.csv").write_text("a,b\n")
    return kinds
