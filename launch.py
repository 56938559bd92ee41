"""Command-line entry point of byol_jax.

    python launch.py --config=configs/<file>.py[:arg] --workdir=DIR [--config.key=value ...]

With no flags it pretrains the default config (Fashion-MNIST) into ./workdirs/fashion_mnist.
Running the same command again resumes from the newest checkpoint in DIR.
"""

import os
import sys
import traceback

if __name__ == "__main__":
    # Before JAX or TensorFlow load: JAX_PLATFORMS=cpu on a machine without GPU/TPU (no plugin
    # tracebacks from the preflight extras), native INFO lines filtered out of stderr
    # (byol_jax/console.py explains both; BYOL_JAX_RAW_STDERR=1 shows everything).
    from byol_jax import console

    console.setup_quiet_console()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS
MODES = ["train", "linear_eval", "fine_tune", "knn", "baselines", "export", "embed"]
# --mode -> the type of the config.evals entries it runs on a workdir's newest checkpoint.
EVAL_MODES = {
    "linear_eval": "linear",
    "fine_tune": "fine_tune",
    "knn": "knn",
    "baselines": "baselines",
}


def _define_flags() -> None:
    # Not at import time: the default config file is loaded (and --config.* overrides applied)
    # as soon as the flag is defined, and errors there must become one-line messages.
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(_HERE, "configs", "fashion_mnist.py"),
        "Experiment config file, optionally with ':arg'.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Run directory (default: ./workdirs/<config name>).")
    flags.DEFINE_enum(
        "mode",
        "train",
        MODES,
        "train: pretrain (resumes); linear_eval / fine_tune / knn / baselines: run the "
        "config.evals entries of that type on the newest checkpoint in --workdir; export: write "
        "the encoder alone to --output (default WORKDIR/export); "
        "embed: embeddings of --split to --output (.npy).",
    )
    flags.DEFINE_string("output", None, "Output path for --mode=export/embed.")
    # Multi-process runs use JAX's own distributed runtime (jax.distributed.initialize).
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "auto: initialize JAX's distributed runtime when a coordinator is given, on a Cloud TPU "
        "VM, or in a GKE TPU pod / SLURM / Open MPI job of several processes.",
    )
    flags.DEFINE_string(
        "coordinator_address",
        os.environ.get("JAX_COORDINATOR_ADDRESS"),
        "host:port of process 0 (env JAX_COORDINATOR_ADDRESS).",
    )
    env_int = lambda name: int(os.environ[name]) if name in os.environ else None
    flags.DEFINE_integer(
        "num_processes", env_int("JAX_NUM_PROCESSES"), "Process count (env JAX_NUM_PROCESSES)."
    )
    flags.DEFINE_integer(
        "process_id", env_int("JAX_PROCESS_ID"), "This process's index (env JAX_PROCESS_ID)."
    )
    flags.DEFINE_string("split", None, "Split for --mode=embed (default: config.data.eval_split).")
    flags.DEFINE_bool(
        "allow_config_change",
        False,
        "Resume even if the model/data config differs from the one saved in the workdir.",
    )


def _launcher_in_environment() -> bool:
    """SLURM, Open MPI or a GKE TPU pod with several processes: they say so in the environment."""
    env = os.environ
    return (
        int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")  # TPU pods on GKE
    )


def _on_cloud_tpu_vm() -> bool:
    """A machine with TPU chips whose metadata server JAX may ask for its slice's workers.

    A Cloud TPU VM names its workers in its metadata, not in the environment, so every TPU VM
    initializes the runtime (a single-host slice as one process). Without it a pod slice still
    runs (libtpu connects the hosts), but no preemption notice or failed host reaches the
    others: SIGTERM would kill every worker without a checkpoint.
    """
    if "TPU_SKIP_MDS_QUERY" in os.environ:  # JAX's own switch for "no metadata server here"
        return False
    try:
        # JAX's TPU probe (PCI vendor and device ids): Google's vendor id alone also matches
        # the gVNIC of any GCE VM, GPU ones included. Private API, hence the fallback.
        from jax._src import hardware_utils

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    except Exception:  # a JAX without the probe: environment variables only, as before
        return False
    return chips > 0


def _initialize_distributed(
    mode: str, coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Start JAX's multi-controller runtime before anything touches the backend.

    ``mode``: ``--distributed`` (auto, on, off); the rest as their flags.
    """
    import jax

    explicit = coordinator_address is not None
    asked = mode == "on" or explicit or _launcher_in_environment()
    if mode == "off" or not (asked or _on_cloud_tpu_vm()):
        return
    if explicit and (num_processes is None or process_id is None):
        _fail("--coordinator_address needs --num_processes and --process_id as well")
    # CPU processes need a collectives backend to talk to each other; GPU/TPU ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    except Exception as error:  # JAX's metadata query, e.g. on a TPU VM that has no server
        # A runtime that failed after its client was made (connecting to the others) would
        # leave half a pod running on its own: only a failure before that is survivable.
        if asked or jax.distributed.is_initialized():
            raise
        # Only the TPU VM guess failed: one host runs as before; a pod slice is refused once
        # the backend reports several processes (main).
        print(
            f"warning: JAX's distributed runtime did not start on this TPU VM ({error}); "
            "running without it (--distributed=on makes this an error)",
            file=sys.stderr,
        )


# Log records that repeat dozens of times per run and need no action: tfds probing dataset
# folders without a prepared copy (the IDX fallback is used), and Orbax opening checkpoints
# read-only for evaluation. Matched on their format strings, so other warnings still show.
_NOISE = (
    "Variant folder %s has no %s",
    "Given directory is read only=%s",
    "CheckpointManagerOptions.read_only=True, setting save_interval_steps=0.",
    "%s is read only, save will be skipped",
    "%s is read only, delete will be skipped",
)


def _silence_known_noise() -> None:
    logging.get_absl_logger().addFilter(lambda record: record.msg not in _NOISE)


def _default_workdir() -> str:
    config_path = FLAGS["config"].config_filename.split(":")[0]
    name = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("workdirs", name)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here so that `--help` stays fast and flags parse before JAX initializes.
    _initialize_distributed(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    import jax

    from byol_jax import data as input_pipeline
    from byol_jax import validation

    if not FLAGS["verbosity"].present:
        # Orbax and TF log every save at INFO; keep the console to our progress lines.
        logging.set_verbosity(logging.WARNING)
    _silence_known_noise()
    config = FLAGS.config
    try:
        config.get("batch_size")
    except OSError:
        # ml_collections defers a config file that failed to load to its first access.
        _fail(f"cannot load config file {FLAGS['config'].config_filename!r}: no such file")
    # CPU autotuning (cached per machine): XLA reads its flags when validation starts the backend.
    conv_plan = ()
    if FLAGS.mode == "train" and not jax.distributed.is_initialized():
        conv_plan = _cpu_autotune(config)
    workdir = FLAGS.workdir or _default_workdir()
    try:
        validation.validate_config(
            config,
            device_count=jax.device_count(),
            process_count=jax.process_count(),
            known_datasets=input_pipeline.is_known_dataset,
        )
    except validation.ConfigError as error:
        _fail(str(error))
    if jax.process_count() > 1 and not jax.distributed.is_initialized():
        _fail(_no_runtime_message(jax.process_count()))
    _enable_compilation_cache(config, workdir)
    # Imported after validation: they pull in TensorFlow (seconds) that a typo should not wait on.
    from byol_jax import checkpoint, export, train, workdir_config
    from byol_jax.evaluators.base import EvaluatorError

    try:
        if jax.process_index() == 0:
            print(f"byol_jax: {FLAGS.mode} on {config.data.dataset}, workdir {workdir}")
        if FLAGS.mode == "train":
            summary = train.train_and_evaluate(
                config,
                workdir,
                allow_config_change=FLAGS.allow_config_change,
                conv_plan=conv_plan,
            )
        else:
            summary = _evaluate(FLAGS.mode, config, workdir)
    except (
        input_pipeline.DatasetError,
        checkpoint.CheckpointError,
        export.ExportError,
        EvaluatorError,
        train.NonFiniteLossError,
        workdir_config.ConfigConflictError,
        train.ReplicaMismatchError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        _exit_now_if_multi_process(2)
        sys.exit(2)
    except BaseException:
        if jax.process_count() > 1:
            traceback.print_exc()
        _exit_now_if_multi_process(1)
        raise
    if jax.process_index() == 0:
        print(f"done: {summary}")


def _enable_compilation_cache(config, workdir: str) -> None:
    """JAX's persistent compilation cache, so a restarted job does not compile again.

    In ``config.compilation_cache_dir`` or ``WORKDIR/compilation_cache`` (a ``gs://`` workdir
    keeps it across preempted VMs). A cache folder set through ``JAX_COMPILATION_CACHE_DIR``
    wins; ``--config.compilation_cache=False`` turns it off.
    """
    import jax

    from byol_jax import storage

    if not config.compilation_cache or jax.config.jax_compilation_cache_dir:
        return
    folder = config.compilation_cache_dir or storage.path(workdir) / "compilation_cache"
    jax.config.update("jax_compilation_cache_dir", str(folder))


def _cpu_autotune(config) -> tuple:
    """Measured (or cached) CPU plan for ``config``: applies its XLA flags, returns conv choices.

    Off with ``--config.cpu_autotune=False``, an explicit ``model.conv_impl`` or user-set
    ``XLA_FLAGS``; a config that fails validation is not tuned (validation reports it next).
    """
    from byol_jax import cpu_autotune, train, validation
    from byol_jax import data as input_pipeline

    try:
        validation.validate_config(
            config, device_count=1, process_count=1, known_datasets=input_pipeline.is_known_dataset
        )
        spec = train.cpu_tune_spec(config)
    except (validation.ConfigError, AttributeError, KeyError, TypeError, ValueError):
        return ()
    if spec is None:
        return ()
    try:
        plan = cpu_autotune.plan_for(spec)
    except (RuntimeError, OSError) as error:
        print(f"cpu autotune: skipped ({error})", file=sys.stderr)
        return ()
    if plan is None:
        return ()
    cpu_autotune.apply_flags(plan)
    return plan.convs


def _evaluate(mode: str, config, workdir: str) -> dict:
    """The non-training modes; all read the newest checkpoint in ``workdir``."""
    import jax

    from byol_jax import export, storage, train_data, train_evals, workdir_config

    data = config.data
    if mode in EVAL_MODES:
        return train_evals.evaluate_workdir(config, workdir, EVAL_MODES[mode])
    workdir_config.ensure_encoder_spec(config, workdir)  # workdirs of earlier versions
    if mode == "export":
        out = FLAGS.output or f"{workdir}/export"
        return {"written": export.export_encoder(workdir, out, process_index=jax.process_index())}
    split = FLAGS.split or data.eval_split
    out = FLAGS.output or str(storage.path(workdir) / f"embeddings_{split.replace(':', '_')}.npy")
    # On a pod each process embeds and writes its own part of the split.
    written = export.embed_split(
        workdir,
        data.dataset,
        split,
        out,
        workdir=workdir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        **train_data.source_options(data),
    )
    if jax.process_count() > 1:
        return {"written": out, "parts": jax.process_count(), "read": "export.read_embeddings"}
    return {"written": written["embeddings"]}


def _exit_now_if_multi_process(code: int) -> None:
    """Exit at once when other processes depend on this one.

    A normal exit would wait in JAX's shutdown barrier for processes that are themselves
    waiting for this one (in a collective or a checkpoint barrier): every process would hang
    for minutes. Exiting without it makes the distributed runtime see the task die and
    terminate the others within a second, so the whole job fails fast.
    """
    jax = sys.modules.get("jax")  # Not imported yet: no runtime to wait for.
    if jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _no_runtime_message(process_count: int) -> str:
    return (
        f"this job runs as {process_count} processes, but JAX's distributed runtime is not "
        "initialized (--distributed=off on a TPU pod slice?): without it a preemption notice "
        "or a failed host does not reach the other processes. Pass "
        "--distributed=on (JAX reads the topology), or --coordinator_address, "
        "--num_processes and --process_id."
    )


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    _exit_now_if_multi_process(2)
    sys.exit(2)


def _unknown_key_message(error: Exception, argv: list[str]) -> str:
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    return f"unknown config key {error} among {overrides}"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or config file is one line on stderr, not a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        # Config-file errors embed the traceback; its last line names the actual problem.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        _fail(lines[-1] if lines else str(error))
    except (AttributeError, KeyError) as error:
        # ml_collections raises these for an override of a key the config does not have.
        _fail(_unknown_key_message(error, argv))


if __name__ == "__main__":
    try:
        _define_flags()  # loads the default config and applies --config.* overrides to it
    except (AttributeError, KeyError) as error:
        _fail(_unknown_key_message(error, sys.argv))
    except (ValueError, TypeError) as error:
        _fail(f"bad config or override: {error}")
    app.run(main, flags_parser=_parse_flags)
