"""launch.py as a user runs it: bad configs fail in one line; a rerun resumes."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from launch_helpers import ROOT, SMOKE, launch_command, launch_env

# Checked in-process: the config flag parses the override as launch.py does, then the same
# validation runs (no subprocess importing JAX and tfds per case).
BAD_VALUES = [
    ("--config.batch_size=-4", "config.batch_size=-4"),
    ("--config.batch_size=12", "divisible by the 8 devices"),
    ("--config.model.encoder=resnet19", "config.model.encoder='resnet19'"),
    ("--config.data.dataset=no_such_dataset", "config.data.dataset='no_such_dataset'"),
    ("--config.data.image_size=4", "config.data.image_size=4"),
    ("--config.base_tau=1.5", "config.base_tau=1.5"),
    ("--config.optimizer.base_lr=0.0", "config.optimizer.base_lr=0.0"),
    ("--config.max_warmup_fraction=1.0", "config.max_warmup_fraction=1.0 is invalid: in [0, 1)"),
    ("--config.model.stem=tiny", "config.model.stem='tiny'"),
    ("--config.model.dtype=float8", "config.model.dtype='float8'"),
    ("--config.log_every_steps=0", "config.log_every_steps=0"),
    ("--config.data.eval_crop_fraction=1.5", "config.data.eval_crop_fraction=1.5"),
    ("--config.data.stream_shards=-1", "config.data.stream_shards=-1"),
    ("--config.evals.knn.every_steps=3", "config.evals.knn.every_steps=3"),
    ("--config.evals.table.holdout_fraction=1.0", "config.evals.table.holdout_fraction=1.0"),
    ("--config.evals.table.rows=('pixels',)", "config.evals.table.rows=('pixels',)"),
    ("--config.augment.jitter_prob=1.5", "config.augment.jitter_prob=1.5"),
    ("--config.augment.jitter_strength=-1.0", "config.augment.jitter_strength=-1.0"),
    ("--config.augment.crop_aspect_range=(1.5,1.0)", "config.augment.crop_aspect_range=(1.5, 1.0)"),
]
# Errors of the command line itself, as a user sees them: one line on stderr, exit code 2.
BAD_COMMAND_LINES = [
    (["--config.batch_size=abc"], "--config.batch_size=abc"),
    (["--config.no_such_key=1"], "unknown config key"),
    ([f"--config={ROOT}/configs/imagenet.py:epochs=7"], "epochs=7 has no preset"),
    ([f"--config={ROOT}/configs/missing.py"], "cannot load config file"),
    (["--config.evals.knn.type=svm"], "config.evals.knn.type='svm' is not an evaluator"),
]


def _parsed_config(override: str, monkeypatch):
    from absl import flags
    from ml_collections import config_flags

    argv = ["launch.py", f"--config={SMOKE}", override]
    monkeypatch.setattr(sys, "argv", argv)  # the config flag reads overrides when defined
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", SMOKE, flag_values=values, lock_config=True)
    values(argv)
    return values.config


@pytest.mark.parametrize("override, expected", BAD_VALUES)
def test_bad_values_are_refused_by_validation(override, expected, monkeypatch):
    from byol_jax import data as input_pipeline
    from byol_jax import validation

    config = _parsed_config(override, monkeypatch)
    with pytest.raises(validation.ConfigError) as error:
        validation.validate_config(
            config,
            device_count=8,
            process_count=1,
            known_datasets=input_pipeline.is_known_dataset,
        )
    assert expected in str(error.value)


def _launch(args, workdir):
    return subprocess.run(
        launch_command(workdir, *args),
        capture_output=True,
        text=True,
        env=launch_env(),
        cwd=ROOT,
        timeout=600,
    )


def test_bad_command_lines_fail_with_one_clear_line(tmp_path):
    def run(case):
        index, (args, expected) = case
        workdir = tmp_path / f"run{index}"
        return args, expected, workdir, _launch([f"--config={SMOKE}", *args], workdir)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, enumerate(BAD_COMMAND_LINES)))
    for args, expected, workdir, result in results:
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1, (args, result.stderr)
        assert expected in error_lines[0], (args, error_lines)
        # Nothing was written: validation happens before any work.
        assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize("runs", [2])
def test_same_command_twice_resumes(tmp_path, runs):
    workdir = tmp_path / "run"
    args = [f"--config={SMOKE}", "--config.num_steps=4"]
    first = _launch(args, workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "starting a new run" in first.stdout
    assert "step 4/4" in first.stdout
    second = _launch(args, workdir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from step 4" in second.stdout
    assert "step 4/4 |" not in second.stdout  # no step was trained again
    with open(workdir / "metrics.jsonl") as f:
        steps = [line for line in f if '"loss"' in line]
    assert len(steps) == 2  # steps 2 and 4, once each


def test_stream_shards_apply_only_to_streamed_data_and_default_to_a_divisor():
    # In-process: no JAX/tfds subprocess needed for a validation question.
    from byol_jax import train_data, validation
    from configs import fashion_mnist

    config = fashion_mnist.get_config()
    config.batch_size = 32  # refused before: stream_shards 64 did not divide it
    validation.validate_config(config, device_count=8, process_count=1)
    config.data.stream_shards = 3  # checked by the pipeline when tfds data is streamed
    validation.validate_config(config, device_count=8, process_count=1)
    config.data.stream_shards = -1
    with pytest.raises(validation.ConfigError, match="config.data.stream_shards=-1"):
        validation.validate_config(config, device_count=8, process_count=1)
    assert train_data.stream_shards(0, 32, 1) == 32
    assert train_data.stream_shards(0, 4096, 1) == 64 == train_data.stream_shards(0, 4096, 4)
    assert train_data.stream_shards(0, 96, 1) == 48 and train_data.stream_shards(0, 90, 5) == 45
    assert train_data.stream_shards(16, 96, 2) == 16  # an explicit value is kept


def test_default_config_variants_validate_and_unknown_ones_are_refused():
    from byol_jax import validation
    from configs import fashion_mnist

    for variant in (None, "", "quick", "long"):
        validation.validate_config(fashion_mnist.get_config(variant), device_count=1)
    default = fashion_mnist.get_config()
    quick, long = fashion_mnist.get_config("quick"), fashion_mnist.get_config("long")
    assert (default.model.encoder, default.model.zero_init_last_bn) == ("resnet18", True)
    # :quick is the ResNet-10 recipe, the default until 2026-12-06 (docs/recipe_study.md) ...
    quick.model.encoder, quick.model.zero_init_last_bn = "resnet18", True
    quick.optimizer.base_lr, quick.num_epochs = 1.5, 15
    assert quick.to_dict() == default.to_dict()
    # ... and :long only trains the default's recipe for longer.
    assert (default.num_epochs, long.num_epochs) == (15, 20)
    long.num_epochs = default.num_epochs
    assert long.to_dict() == default.to_dict()
    with pytest.raises(ValueError, match="unknown variant 'longer'"):
        fashion_mnist.get_config("longer")
    with pytest.raises(ValueError, match="its recipe is the default"):
        fashion_mnist.get_config("deep")


def _clear_launcher_environment(monkeypatch):
    for name in (
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
        "TPU_SKIP_MDS_QUERY",
    ):
        monkeypatch.delenv(name, raising=False)


def test_distributed_runtime_starts_on_tpu_vms_and_multi_process_launchers(monkeypatch):
    from jax._src import hardware_utils

    import launch

    _clear_launcher_environment(monkeypatch)
    # No TPU chips (the probe says so on any machine without them), no launcher.
    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id", lambda: (0, None))
    assert not launch._launcher_in_environment() and not launch._on_cloud_tpu_vm()
    for name, value, detected in [
        ("SLURM_NTASKS", "1", False),
        ("SLURM_NTASKS", "4", True),
        ("OMPI_COMM_WORLD_SIZE", "2", True),
        ("TPU_WORKER_HOSTNAMES", "w0", False),
        ("TPU_WORKER_HOSTNAMES", "w0,w1", True),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert launch._launcher_in_environment() is detected, (name, value)
    # A Cloud TPU VM keeps its workers in metadata, not the environment: the chips decide.
    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id", lambda: (4, None))
    assert launch._on_cloud_tpu_vm()
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")  # JAX's "no metadata server" switch
    assert not launch._on_cloud_tpu_vm()
    assert "--distributed=on" in launch._no_runtime_message(8)


def test_a_tpu_vm_whose_runtime_cannot_start_runs_as_one_process(monkeypatch, capsys):
    import jax

    import launch

    _clear_launcher_environment(monkeypatch)
    monkeypatch.setattr(launch, "_on_cloud_tpu_vm", lambda: True)
    before = jax.config.jax_cpu_collectives_implementation
    try:
        # Forced off: not even tried.
        launch._initialize_distributed("off", None, None, None)
        assert capsys.readouterr().err == ""
        # Guessed from the chips alone, and JAX's initialize() fails before any client exists
        # (here: no cluster to detect, or the backend already up in this test process; on a
        # TPU VM: no metadata server): the run goes on as one process with a warning.
        launch._initialize_distributed("auto", None, None, None)
        assert "did not start on this TPU VM" in capsys.readouterr().err
        assert not jax.distributed.is_initialized()
        # Asked for: the same failure is an error.
        with pytest.raises(Exception, match="coordinator_address|must be called before"):
            launch._initialize_distributed("on", None, None, None)
    finally:
        jax.config.update("jax_cpu_collectives_implementation", before)
