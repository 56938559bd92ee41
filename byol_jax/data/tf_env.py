"""Lazy TensorFlow imports for the data layer, with TF kept off the accelerators.

TensorFlow only decodes and batches on the host; importing it lazily keeps ``import byol_jax``
cheap, and hiding GPUs/TPUs from it leaves all accelerator memory to JAX.
"""

from __future__ import annotations

import contextlib
from typing import Any

_accelerators_hidden = False


def hide_accelerators_from_tf() -> None:
    """Keeps TensorFlow off GPUs/TPUs so it never competes with JAX for accelerator memory."""
    global _accelerators_hidden
    if _accelerators_hidden:
        return
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        # RuntimeError: TF devices were already initialised (by someone else), too late to
        # change; ValueError: this TF build does not know the device type.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], kind)
    _accelerators_hidden = True


def import_tf() -> Any:
    """``tensorflow``, with accelerators hidden from it."""
    hide_accelerators_from_tf()
    import tensorflow as tf

    return tf


def import_tfds() -> Any:
    """``tensorflow_datasets``, with accelerators hidden from TensorFlow."""
    hide_accelerators_from_tf()
    import tensorflow_datasets as tfds

    return tfds
