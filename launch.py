"""Command-line entry point of byol_jax.

    python launch.py --config=configs/<file>.py[:arg] --workdir=DIR [--config.key=value ...]

With no flags it pretrains the default config (Fashion-MNIST) into ./workdirs/fashion_mnist.
Running the same command again resumes from the newest checkpoint in DIR.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(_HERE, "configs", "fashion_mnist.py"),
    "Experiment config file, optionally with ':arg'.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default: ./workdirs/<config file name>)."
)
_MODE = flags.DEFINE_enum("mode", "train", ["train"], "What to run.")


def _default_workdir() -> str:
    config_path = flags.FLAGS["config"].config_filename.split(":")[0]
    name = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("workdirs", name)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here so that `--help` stays fast and flags parse before JAX initializes.
    import jax

    from byol_jax import checkpoint, input_pipeline, train, validation

    if not flags.FLAGS["verbosity"].present:
        # Orbax and TF log every save at INFO; keep the console to our progress lines.
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    workdir = _WORKDIR.value or _default_workdir()
    try:
        validation.validate_config(
            config,
            device_count=jax.device_count(),
            process_count=jax.process_count(),
            known_datasets=input_pipeline.is_known_dataset,
        )
        if jax.process_index() == 0:
            print(f"byol_jax: {_MODE.value} on {config.data.dataset}, workdir {workdir}")
        summary = train.train_and_evaluate(config, workdir)
    except (
        validation.ConfigError,
        input_pipeline.DatasetError,
        checkpoint.CheckpointError,
        train.NonFiniteLossError,
    ) as error:
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if jax.process_index() == 0:
        print(f"done: {summary}")


if __name__ == "__main__":
    app.run(main)
