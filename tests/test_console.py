"""The console a user sees: launch.py prints our lines only, with or without the preflight extras.

The end-to-end checks run ``launch.py`` with the environment a user has (no ``JAX_PLATFORMS``,
``TF_CPP_MIN_LOG_LEVEL`` or ``XLA_FLAGS`` from conftest), so the TensorFlow/absl INFO lines and,
where libtpu and the CUDA plugin are installed (as ``.ci/run`` does), their initialization
tracebacks would show up here if the quiet console broke.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import threading

import pytest
from launch_helpers import ROOT, SMOKE, launch_command, launch_env

from byol_jax import console

NATIVE_INFO = [
    b"I0000 00:00:1796536266.817952    9216 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.",
    b"I1206 05:44:41.381530 140635051355008 port.cc:153] oneDNN custom operations are on.",
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"WARNING: Logging before InitGoogle() is written to STDERR",
]
KEPT = [
    b"E1206 05:44:41.381530 140635051355008 xla_bridge.py:510] Jax plugin configuration error",
    b"W0000 00:00:1796536266.817952    9216 local.cc:31] a warning",
    b"error: config.batch_size=-3 is invalid: a positive integer",
    b"Traceback (most recent call last):",
    b"Info: a line of ours",
    b"",
]
# Every line the smoke run may print (stdout and stderr together).
SMOKE_LINES = re.compile(
    r"^(byol_jax: |config: |starting a new run |step \d+/\d+ \| |online probe: |done: )"
)
NOISE = re.compile(
    r"absl::InitializeLog|InitGoogle|oneDNN|cudart|cuda drivers|libtpu|TPU|Traceback|"
    r"plugin configuration error|^[IWE]\d{4} "
)


@pytest.mark.parametrize("line", NATIVE_INFO)
def test_native_info_lines_are_noise(line):
    assert console.is_noise(line)
    assert console.is_noise(line + b"\r")


@pytest.mark.parametrize("line", KEPT)
def test_warnings_errors_and_our_lines_are_kept(line):
    assert not console.is_noise(line)


def _filtered(chunks: list[bytes]) -> bytes:
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    worker = threading.Thread(target=console.filter_stream, args=(read_in, write_out))
    worker.start()
    for chunk in chunks:
        os.write(write_in, chunk)
    os.close(write_in)
    worker.join(timeout=10)
    os.close(write_out)
    with os.fdopen(read_out, "rb") as f:
        out = f.read()
    os.close(read_in)
    return out


def test_filter_drops_noise_and_keeps_everything_else_in_order():
    noisy = b"\n".join([NATIVE_INFO[2], NATIVE_INFO[0], KEPT[0], NATIVE_INFO[1], KEPT[2]])
    # Split mid-line: the filter must reassemble lines across reads.
    out = _filtered([noisy[:50], noisy[50:130], noisy[130:] + b"\nlast line without newline"])
    assert out == KEPT[0] + b"\n" + KEPT[2] + b"\nlast line without newline"


def test_progress_redrawn_in_place_passes_at_once():
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    worker = threading.Thread(target=console.filter_stream, args=(read_in, write_out))
    worker.start()
    os.write(write_in, b"\rcpu autotune: 3/11 shapes")  # no newline yet
    ready, _, _ = select.select([read_out], [], [], 10)
    os.close(write_in)
    assert ready, "a line redrawn with \\r waited for its newline"
    assert os.read(read_out, 1024) == b"\rcpu autotune: 3/11 shapes"
    worker.join(timeout=10)
    for fd in (read_in, write_out, read_out):
        os.close(fd)


def _fake_machine(root, *paths: str, pci: tuple[str, str] | None = None) -> str:
    for path in paths:
        os.makedirs(os.path.dirname(root / path), exist_ok=True)
        (root / path).write_text("")
    if pci:
        device = root / "sys/bus/pci/devices/0000:00:04.0"
        device.mkdir(parents=True)
        (device / "vendor").write_text(pci[0] + "\n")
        (device / "class").write_text(pci[1] + "\n")
    return str(root)


@pytest.mark.parametrize(
    "paths, pci, expected",
    [
        ((), ("0x8086", "0x060000"), "cpu"),  # a plain VM
        ((), ("0x1ae0", "0x020000"), "cpu"),  # GCE CPU VM: Google's NIC is no TPU
        (("dev/nvidiactl",), None, None),  # GPU host (Docker/Kubernetes style)
        (("dev/nvidia0",), None, None),
        (("dev/kfd",), None, None),  # ROCm
        (("dev/accel0",), None, None),  # TPU v2-v4 VM
        (("dev/vfio/0",), None, None),  # TPU v5e/v6e VM
        ((), ("0x1ae0", "0x120000"), None),  # a Google PCI accelerator
    ],
)
def test_jax_platforms_is_cpu_only_without_accelerators(tmp_path, paths, pci, expected):
    root = _fake_machine(tmp_path, *paths, pci=pci)
    environ: dict[str, str] = {}
    assert console.choose_platforms(environ, root=root) == expected
    assert environ.get("JAX_PLATFORMS") == expected


@pytest.mark.parametrize(
    "environ", [{"JAX_PLATFORMS": "cuda"}, {"JAX_PLATFORMS": ""}, {"JAX_PLATFORMS": "cpu,tpu"}]
)
def test_a_users_jax_platforms_is_left_alone(tmp_path, environ):
    before = dict(environ)
    assert console.choose_platforms(environ, root=str(tmp_path)) is None
    assert environ == before


def _user_env(**extra: str) -> dict[str, str]:
    env = launch_env(**extra)
    for name in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS", "BYOL_JAX_RAW_STDERR"):
        env.pop(name, None)
    return env


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args],
        capture_output=True,
        text=True,
        env=_user_env(),
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.mark.skipif(
    console.accelerator_present(), reason="checks the console of a machine without GPU/TPU"
)
def test_smoke_run_prints_only_summary_progress_and_results(tmp_path):
    result = _run(*launch_command(tmp_path / "run", f"--config={SMOKE}"), timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = output.splitlines()
    assert [line for line in lines if NOISE.search(line)] == [], output
    assert [line for line in lines if not SMOKE_LINES.match(line)] == [], output
    assert lines[0].startswith("byol_jax: train on fashion_mnist")
    assert any(line.startswith("online probe: top-1") for line in lines), output
    assert lines[-1].startswith("done: ")


@pytest.mark.skipif(
    console.accelerator_present(), reason="checks the console of a machine without GPU/TPU"
)
def test_config_error_is_the_only_line():
    result = _run(
        *launch_command("/nonexistent", f"--config={SMOKE}", "--config.batch_size=-3"),
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: config.batch_size=-3 is invalid: a positive integer"
    ], result.stderr
