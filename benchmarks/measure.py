"""What every benchmark reports with its figures: the hardware, and the peak memory of a block."""

from __future__ import annotations

import argparse
import os
import platform
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


class PeakRSS:
    """Highest RSS of this process while the block runs, in MB above the RSS at entry.

    Sampled every millisecond by a watcher thread: CPU tensors come and go faster than a
    before/after reading would see.
    """

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2**20


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
