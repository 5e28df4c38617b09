"""What every benchmark reports with its figures (the hardware, the peak memory of a block), and
the one way benchmarks run a bundle."""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{cpu_name()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


class _PeakProbe:
    """Highest reading of ``_read()`` while the block runs, in MB above the reading at entry.

    Sampled every millisecond by a watcher thread: CPU tensors come and go faster than a
    before/after reading would see.
    """

    def _read(self) -> int:
        raise NotImplementedError

    def __enter__(self):
        self.base = self.peak = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())
        self.mb = (self.peak - self.base) / 2**20


class PeakRSS(_PeakProbe):
    """Peak resident set size of this process above its value at entry."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()

    def _read(self) -> int:
        return self._proc.memory_info().rss


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


class PeakHeap(_PeakProbe):
    """Peak bytes that malloc has handed out and not taken back, above the count at entry.

    The CPU analogue of ``torch.cuda.max_memory_allocated``. RSS under-reads a network whose
    tensors fit in memory that malloc freed earlier and kept: the process does not grow, so a
    small network's peak reads as zero after the warm-up call. glibc's ``mallinfo2`` counts
    what is in use whether or not it is new to the process. Where there is no glibc 2.33 or
    later, this falls back to RSS and says so in ``kind``.
    """

    def __init__(self):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = _MallInfo2
            self._mallinfo2 = libc.mallinfo2
            self.kind = "heap"
        except (OSError, AttributeError):
            self._rss = PeakRSS()
            self.kind = "rss"

    def _read(self) -> int:
        if self.kind == "rss":
            return self._rss._read()
        info = self._mallinfo2()
        return info.uordblks + info.hblkhd


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --threads, --json and the hidden --method that runs one method in a child process
    (each method in its own process, so that the peak memory measured is its own)."""
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")


def parse_worker_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def run_bundle(config_files: list[str], overrides: dict, log: Path, env: dict | None = None) -> float:
    """``python -m monai.bundle run`` with ``--key value`` overrides, output to ``log``; returns the
    wall time in seconds, or exits naming the log when the run fails."""
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in config_files])]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    t0 = time.perf_counter()
    with Path(log).open("w") as f:
        done = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        sys.exit(f"{[Path(c).name for c in config_files]} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0
