"""What every data source resolves to: static facts (``DatasetInfo``) and a ``Source`` record.

A ``Source`` is one split of one dataset, in one of three shapes the streams know how to read:
in-memory arrays (IDX), tfds builders (registered datasets and packed folders) and lists of
image files (folders). Shared argument checks and seed derivation live here too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from byol_jax.data.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset split, as seen by the training loop."""

    name: str
    num_examples: int  # of the requested split (whole split, all processes)
    num_classes: int  # 0 if no labels
    source_shape: tuple[int, int, int]  # (S, S, 3) as yielded


@dataclasses.dataclass
class Source:
    """One resolved split: how to read it and what it holds."""

    name: str
    num_examples: int
    num_classes: int
    # 'arrays' (in-memory IDX data), 'tfds' (builders, packed folders) or 'files' (folders).
    kind: str
    # kind == 'arrays': the whole requested split.
    images: np.ndarray | None = None  # uint8 [N, H, W, C]
    labels: np.ndarray | None = None  # int32 [N] (also kind == 'files')
    # kind == 'tfds'.
    builder: Any = None
    split: str = ""
    encoded_image: bool = True
    has_label: bool = True
    # kind == 'files': absolute paths (local or gs://), in the split's fixed order.
    paths: list[str] = dataclasses.field(default_factory=list)
    # Every image is square (IDX data; tfds features with a static square shape): training
    # batches then keep today's format, whole square images with no 'valid' sizes.
    square: bool = True


def check_common(batch_size: int, source_size: int, process_index: int, process_count: int):
    """Raises ``DatasetError`` for batch/size/process arguments no stream can serve."""
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size}.")
    if source_size < 1:
        raise DatasetError(f"source_size must be >= 1, got {source_size}.")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DatasetError(
            f"Need 0 <= process_index < process_count, got {process_index}, {process_count}."
        )


def derive_seed(seed: int, index: int) -> int:
    """A 31-bit seed from (seed, index); small enough to mix with epochs in int64."""
    state = np.random.SeedSequence([seed % 2**63, index]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF
