"""How long a checkpoint save holds up training: the old synchronous save vs the async one.

    PYTHONPATH=. python docs/measurements/save_stall.py --config=configs/fashion_mnist.py \
        [--rounds=3] [--folder=gs://BUCKET/stall]

Per round and mode it times a window of steps without a save and the same window with one save
after its first step (both ending when the last step's state is ready), so the difference is
what the save added to training. "sync" is the previous loop's save: the whole state copied to
the host, hashed and checked for NaN there, then written and waited for. "async" is today's:
fingerprint and NaN check on device, the device-to-host copy, then the write in Orbax's
background thread (its remaining write time is reported apart, as "write_after_s").
Prints one JSON line per round and mode.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from byol_jax import bench, checkpoint, parallel

_CONFIG = config_flags.DEFINE_config_file("config", "configs/fashion_mnist.py")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of both modes.")
_STEPS = flags.DEFINE_integer("steps", 6, "Steps per timed window.")
_FOLDER = flags.DEFINE_string(
    "folder", None, "Where to save (local or gs://; default: a temporary local folder)."
)


def _window(step, state, batch, steps, save=None):
    start = time.perf_counter()
    for i in range(steps):
        state, _ = step(state, batch)
        if i == 0 and save is not None:
            save(state)
    jax.block_until_ready(state)
    return state, time.perf_counter() - start


def main(argv: list[str]) -> None:
    del argv
    built = bench.build_step(_CONFIG.value)
    step, state, batch = built.compiled, built.state, built.batch
    fingerprints = parallel.map_function(checkpoint.fingerprint)
    with tempfile.TemporaryDirectory() as scratch:
        folder = _FOLDER.value or scratch
        managers = {
            "sync": checkpoint.create_manager(f"{folder}/sync", asynchronous=False),
            "async": checkpoint.create_manager(f"{folder}/async", asynchronous=True),
        }
        counter = iter(range(1, 1_000_000))

        def save_sync(current):
            host = parallel.fetch(current)
            digest = hashlib.sha256()
            for leaf in jax.tree.leaves(host):
                digest.update(np.ascontiguousarray(leaf).tobytes())
            checkpoint.save(managers["sync"], next(counter), host)
            checkpoint.wait(managers["sync"])

        def save_async(current):
            np.asarray(fingerprints(current))
            on_device = parallel.replicated_to_global(current)
            checkpoint.save(managers["async"], next(counter), on_device)

        state, _ = _window(step, state, batch, _STEPS.value)  # warm up both paths
        state, _ = _window(step, state, batch, _STEPS.value, save_sync)
        state, _ = _window(step, state, batch, _STEPS.value, save_async)
        checkpoint.wait(managers["async"])
        for round_index in range(_ROUNDS.value):
            for mode, save in (("sync", save_sync), ("async", save_async)):
                state, plain = _window(step, state, batch, _STEPS.value)
                state, with_save = _window(step, state, batch, _STEPS.value, save)
                start = time.perf_counter()
                checkpoint.wait(managers[mode])
                result = {
                    "round": round_index,
                    "mode": mode,
                    "steps": _STEPS.value,
                    "window_s": round(plain, 4),
                    "window_with_save_s": round(with_save, 4),
                    "save_stall_s": round(with_save - plain, 4),
                    "write_after_s": round(time.perf_counter() - start, 4),
                }
                print(json.dumps(result), flush=True)
        for manager in managers.values():
            manager.close()


if __name__ == "__main__":
    sys.exit(app.run(main))
