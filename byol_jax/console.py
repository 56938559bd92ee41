"""A quiet console for ``launch.py``: no native INFO lines, no plugin tracebacks on CPU hosts.

Two sources of noise reach a user's terminal before any of our own lines:

* **Native libraries log before anyone configures their logging.** TensorFlow ("oneDNN custom
  operations are on"), the CUDA PJRT plugin ("Could not find cuda drivers", at ``import jax``
  and again when JAX loads its plugins) and libtpu write absl/glog INFO lines straight to file
  descriptor 2, each preceded by ``WARNING: All log messages before absl::InitializeLog() is
  called are written to STDERR``. ``TF_CPP_MIN_LOG_LEVEL`` does not reach them (absl has not
  been initialized yet). :func:`filter_native_stderr` routes file descriptor 2 through a small
  child process (this file run as a script) that drops exactly those lines -- absl-format
  ``I`` (INFO) lines and the two "logging before init" banners -- and passes everything else
  through unchanged: warnings, errors, Python tracebacks, progress. The child reads until every
  writer has closed the pipe, so output written just before a crash (an abort's ``F`` line, a
  segfault's dump) is still shown; it ignores SIGINT and SIGTERM for the same reason.
* **Accelerator plugins that find no accelerator.** With the ``preflight`` extras installed
  (libtpu, jax-cuda12-plugin), every JAX start on a machine without a GPU or TPU prints the CUDA
  plugin's failed initialization (a traceback) and libtpu's host-bounds errors, then falls back
  to the CPU. :func:`choose_platforms` sets ``JAX_PLATFORMS=cpu`` when this machine shows no sign
  of an accelerator, so JAX does not try them. A GPU host is recognized by the device nodes JAX
  itself checks (``/dev/nvidia0``, ``/dev/nvidiactl``, ``/dev/dxg``) or ROCm's ``/dev/kfd``; a
  TPU host by ``/dev/accel*``, ``/dev/vfio/<n>`` or a Google PCI device that is not a network
  card (``TPU_*`` variables prove nothing: ``import jax`` sets two wherever libtpu is
  installed). On those hosts nothing is set and JAX picks the backend as
  usual. A ``JAX_PLATFORMS`` you set yourself (even empty) always wins.

``BYOL_JAX_RAW_STDERR=1`` turns the filter off (everything reaches the terminal as written).
Only the standard library is imported here: the module runs before JAX and as the filter script.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import MutableMapping

# absl / glog line format: severity letter, MMDD, time, thread id, file:line] message.
_NATIVE_INFO = re.compile(rb"^I\d{4} [0-9:.]+ +\d+ [^ \]]+:\d+\] ")
_BANNERS = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"WARNING: Logging before InitGoogle() is written to STDERR",
)
_NVIDIA_DEVICES = ("dev/nvidia0", "dev/nvidiactl", "dev/dxg", "dev/kfd")
_GOOGLE_PCI_VENDOR = "0x1ae0"
_NETWORK_PCI_CLASS = "0x02"  # gVNIC, the Google NIC every GCE VM has, is not a TPU


def is_noise(line: bytes) -> bool:
    """True for a native INFO line or a "logging before init" banner (without its newline)."""
    line = line.rstrip(b"\r")
    return line in _BANNERS or _NATIVE_INFO.match(line) is not None


def _maybe_noise_start(partial: bytes) -> bool:
    """Whether an unfinished line could still become noise (then it waits for its newline)."""
    if b"\r" in partial:
        return False  # a progress line redrawn in place: show it now
    if partial.startswith(b"I"):
        return re.match(rb"^I\d{0,4}( |$)", partial) is not None
    return any(banner.startswith(partial) for banner in _BANNERS)


def filter_stream(read_fd: int, write_fd: int) -> None:
    """Copies ``read_fd`` to ``write_fd`` until end of file, dropping :func:`is_noise` lines."""
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not is_noise(line))
        if pending and not _maybe_noise_start(pending):
            out, pending = out + pending, b""
        _write_all(write_fd, out)
    if pending and not is_noise(pending):
        _write_all(write_fd, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def accelerator_present(root: str = "/") -> bool:
    """Whether this machine may have a GPU or TPU for JAX (errs towards yes)."""
    if any(os.path.exists(os.path.join(root, path)) for path in _NVIDIA_DEVICES):
        return True
    if glob.glob(os.path.join(root, "dev/accel*")) or glob.glob(
        os.path.join(root, "dev/vfio/[0-9]*")
    ):
        return True
    for vendor_path in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor")):
        device = os.path.dirname(vendor_path)
        try:
            with open(vendor_path) as f:
                vendor = f.read().strip()
            if vendor != _GOOGLE_PCI_VENDOR:
                continue
            with open(os.path.join(device, "class")) as f:
                if not f.read().strip().startswith(_NETWORK_PCI_CLASS):
                    return True
        except OSError:
            return True  # unreadable: do not rule an accelerator out
    return False


def choose_platforms(
    environ: MutableMapping[str, str] | None = None, root: str = "/"
) -> str | None:
    """Sets ``JAX_PLATFORMS=cpu`` on a machine without accelerators; returns what it set.

    Leaves a user's ``JAX_PLATFORMS`` (even an empty one) and any accelerator host alone.
    """
    environ = os.environ if environ is None else environ
    if "JAX_PLATFORMS" in environ or accelerator_present(root):
        return None
    environ["JAX_PLATFORMS"] = "cpu"
    return "cpu"


_filter: subprocess.Popen | None = None  # kept referenced for the life of the process


def filter_native_stderr() -> subprocess.Popen | None:
    """Routes file descriptor 2 of this process (and of its children) through the filter.

    At exit the real stderr is put back and the filter is given a moment to drain, so that a
    last error line reaches the terminal before the shell's prompt does. Returns the filter
    process, or None when ``BYOL_JAX_RAW_STDERR`` is set or it cannot start.
    """
    if os.environ.get("BYOL_JAX_RAW_STDERR"):
        return None
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    # The filter holds the only write end of `done` and never writes: end of file on it means
    # the filter has exited. (Waiting for the process itself is unreliable: a library may have
    # set SIGCHLD to be ignored, and then wait() returns at once.)
    done_read, done_write = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=read_fd,
            stdout=2,  # the real stderr, before the switch below
            close_fds=True,
            pass_fds=(done_write,),
        )
    except OSError:
        for fd in (read_fd, write_fd, done_read, done_write):
            os.close(fd)
        return None
    os.close(read_fd)
    os.close(done_write)
    real_stderr = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    global _filter
    _filter = child
    atexit.register(_restore_and_drain, real_stderr, done_read)
    return child


def _restore_and_drain(real_stderr: int, done_read: int, timeout: float = 5) -> None:
    """Puts the real stderr back (closing our end of the pipe) and waits for the filter."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os.dup2(real_stderr, 2)
    os.close(real_stderr)
    # Readable at end of file, i.e. once the filter has drained the pipe and exited; a child of
    # ours that still holds the pipe keeps it open, and then we stop waiting after `timeout`.
    with contextlib.suppress(OSError, ValueError):
        select.select([done_read], [], [], timeout)
    os.close(done_read)


def setup_quiet_console() -> None:
    """Everything ``launch.py`` needs before it imports JAX or TensorFlow."""
    # TensorFlow's C++ INFO lines once its logging is initialized (the rest: the filter).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    choose_platforms()
    filter_native_stderr()


def _main() -> None:
    # Keep draining after Ctrl-C / SIGTERM to the process group: launch.py prints its last
    # lines (checkpoint written, stopped after step N) after receiving them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    filter_stream(0, 1)


if __name__ == "__main__":
    _main()
