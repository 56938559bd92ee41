"""Accelerators the preflight can compile for without having them: chip specs and topologies.

A target is ``tpu:<generation>:<topology>`` (``tpu:v5e:4x4``, ``tpu:v4:2x2x1``) or
``gpu:<chip>:<count>`` (``gpu:h100:8``). ``topology_devices`` returns compile-only devices of that
target: TPU ones from libtpu (``pip install libtpu==0.0.42.*``), GPU ones from the CUDA PJRT
plugin (``pip install jax-cuda12-plugin==0.10.2``) given a device description
(``GpuTargetConfigProto``), so that ``jax.pmap(..., devices=...).lower(...).compile()`` compiles
for the real chip. The executable can be inspected, never run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

GIB = 1024**3


class TargetError(ValueError):
    """A target that cannot be parsed or compiled for; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator kind: what a JAX device of it is and how much memory it has."""

    name: str
    platform: str  # "tpu" or "gpu"
    memory_bytes: int  # HBM of one JAX device (a TensorCore on v3, a chip elsewhere)
    description: str
    # TPU: libtpu's topology prefix and chip config; GPU: the device-description fields.
    topology_prefix: str = ""
    chip_config_name: str | None = None
    devices_per_chip: int = 1
    gpu_fields: tuple[tuple[str, Any], ...] = ()
    # JAX's GPU client preallocates this fraction of memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
    usable_fraction: float = 1.0


# HBM per device from the Cloud TPU system-architecture pages. v3 has two TensorCores per chip,
# each its own JAX device with half the chip's 32 GiB; v4 and v5p run both cores of a chip as one
# "megacore" device, as JAX does on those VMs.
_TPUS = {
    "v3": Chip("v3", "tpu", 16 * GIB, "TPU v3 (per TensorCore)", "v3", None, 2),
    "v4": Chip("v4", "tpu", 32 * GIB, "TPU v4 (megacore)", "v4", "megacore"),
    "v5e": Chip("v5e", "tpu", 16 * GIB, "TPU v5e", "v5e"),
    "v5p": Chip("v5p", "tpu", 95 * GIB, "TPU v5p (megacore)", "v5p", "megacore"),
    "v6e": Chip("v6e", "tpu", 32 * GIB, "TPU v6e", "v6e"),
}

# Hopper's device description as XLA keeps it for its GPU compiler tests (openxla/xla,
# xla/backends/gpu/target_config/specs/h100_sxm.txtpb and h200.txtpb): the fields this jaxlib's
# GpuTargetConfigProto knows. An H200 is the same die with 141 GiB HBM3e at 4.8 TB/s.
_HOPPER = (
    ("threads_per_block_limit", 1024),
    ("threads_per_warp", 32),
    ("shared_memory_per_block", 49152),
    ("shared_memory_per_core", 233472),
    ("threads_per_core_limit", 2048),
    ("core_count", 132),
    ("fpus_per_core", 128),
    ("block_dim_limit_x", 2147483647),
    ("block_dim_limit_y", 65535),
    ("block_dim_limit_z", 65535),
    ("l2_cache_size", 52428800),
    ("clock_rate_ghz", 1.98),
    ("shared_memory_per_block_optin", 232448),
    ("registers_per_core_limit", 65536),
    ("registers_per_block_limit", 65536),
)
_GPUS = {
    "h100": Chip(
        "h100",
        "gpu",
        84942979072,
        "NVIDIA H100 80GB HBM3",
        gpu_fields=_HOPPER + (("memory_bandwidth", 3352320000000),),
        usable_fraction=0.75,
    ),
    "h200": Chip(
        "h200",
        "gpu",
        151397597184,
        "NVIDIA H200 141GB HBM3e",
        gpu_fields=_HOPPER + (("memory_bandwidth", 4800000000000),),
        usable_fraction=0.75,
    ),
}
# cuDNN the plugin's wheels require (jax-cuda12-plugin 0.10.2: nvidia-cudnn-cu12 >= 9.8).
_CUDNN = (9, 8)

# Cloud TPU accelerator-type names of a small slice per generation (libtpu asks for one).
_ACCELERATOR_TYPES = {"v3": "v3-8", "v4": "v4-8", "v5e": "v5litepod-4", "v5p": "v5p-8",
                      "v6e": "v6e-4"}  # fmt: skip

TPU_PIP = "pip install libtpu==0.0.42.*  (or: pip install -r requirements-preflight.txt)"
GPU_PIP = "pip install jax-cuda12-plugin==0.10.2  (or: pip install -r requirements-preflight.txt)"


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed ``--target``: the chip, its topology and how many JAX devices it has."""

    spec: str
    chip: Chip
    topology: str  # TPU: "4x4" / "2x2x1"; GPU: the device count as a string
    devices: int

    @property
    def platform(self) -> str:
        return self.chip.platform


def allowed_targets() -> str:
    """The accepted target forms, for error messages and --help."""
    tpus = ", ".join(f"tpu:{name}:<AxB[xC]>" for name in _TPUS)
    gpus = ", ".join(f"gpu:{name}:<count>" for name in _GPUS)
    return f"{tpus}, {gpus} (e.g. tpu:v5e:4x4, tpu:v4:2x2x1, gpu:h100:8)"


def parse_target(spec: str) -> Target:
    """``tpu:v5e:4x4`` / ``gpu:h100:8`` → Target; a TargetError naming the allowed forms."""
    parts = spec.strip().lower().split(":")
    bad = f"unknown target {spec!r}; allowed: {allowed_targets()}"
    if len(parts) != 3:
        raise TargetError(bad)
    platform, name, topology = parts
    if platform == "tpu" and name in _TPUS:
        dims = topology.split("x")
        if not 2 <= len(dims) <= 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise TargetError(f"TPU topology {topology!r} must look like 2x2 or 2x2x1; {bad}")
        chip = _TPUS[name]
        devices = math.prod(int(d) for d in dims) * chip.devices_per_chip
        return Target(spec, chip, topology, devices)
    if platform == "gpu" and name in _GPUS:
        if not topology.isdigit() or int(topology) < 1:
            raise TargetError(f"GPU count {topology!r} must be a positive integer; {bad}")
        return Target(spec, _GPUS[name], topology, int(topology))
    raise TargetError(bad)


def gpu_target_config(chip: Chip) -> str:
    """The chip's GpuTargetConfigProto in text form (what the CUDA plugin compiles against)."""
    info = "\n".join(f"  {key}: {value}" for key, value in chip.gpu_fields)
    info += f"\n  device_memory_size: {chip.memory_bytes}\n  cuda_compute_capability {{ major: 9 }}"
    major, minor = _CUDNN
    return (
        f"gpu_device_info {{\n{info}\n}}\n"
        'platform_name: "CUDA"\n'
        f"dnn_version_info {{ major: {major} minor: {minor} }}\n"
        f'device_description_str: "{chip.description}"\n'
    )


def _tpu_devices(target: Target) -> list[Any]:
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise TargetError(f"{target.spec} needs libtpu, which is not installed: {TPU_PIP}") from e
    # Off a TPU VM libtpu asks the GCE metadata server who it is (and logs errors) unless told.
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", _ACCELERATOR_TYPES[target.chip.name])
    # libtpu takes a machine-wide lock meant for real chips; compile-only processes (tests,
    # parallel preflights) must not block each other on it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    kwargs = {}
    if target.chip.chip_config_name:
        kwargs["chip_config_name"] = target.chip.chip_config_name
    name = f"{target.chip.topology_prefix}:{target.topology}"
    try:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
    except Exception as e:  # libtpu's errors are long C++ status strings
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TargetError(f"libtpu cannot describe {target.spec}: {first}") from e
    return list(topology.devices)


def _gpu_devices(target: Target) -> list[Any]:
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError as e:
        raise TargetError(
            f"{target.spec} needs the CUDA PJRT plugin, which is not installed: {GPU_PIP}"
        ) from e
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(
            platform="cuda",
            topology_name="",
            topology=f"1x1x{target.devices}",  # one slice, one host, N GPUs
            target_config=gpu_target_config(target.chip),
        )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TargetError(f"the CUDA plugin cannot describe {target.spec}: {first}") from e
    return list(topology.devices)


def topology_devices(target: Target) -> list[Any]:
    """Compile-only JAX devices of ``target`` (TargetError when the toolchain is missing)."""
    devices = _tpu_devices(target) if target.platform == "tpu" else _gpu_devices(target)
    if len(devices) != target.devices:
        raise TargetError(
            f"{target.spec}: expected {target.devices} devices, the toolchain gave {len(devices)}"
        )
    return devices
