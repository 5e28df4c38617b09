import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# ../shared beside the checkout holds real scans (read-only); LDMONAI_SHARED overrides it.
SHARED = Path(os.environ.get("LDMONAI_SHARED", ROOT.parent / "shared")) / "data"


def shared_path(*parts) -> Path:
    """A path under the shared data folder, or a skip that says exactly what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path}: clone beside ../shared or set LDMONAI_SHARED")
    return path


def monai_bundle(*args, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a fresh process; with ``check``, a failure shows its output tails."""
    cmd = [sys.executable, "-m", "monai.bundle", *map(str, args)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"monai.bundle {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def dcm_qa_nih() -> Path:
    return shared_path("dcm_qa_nih")


@pytest.fixture(scope="session")
def ants_sample() -> Path:
    """MNI152 1 mm brain, its 116-label atlas on the same grid, and Colin27 (read-only)."""
    return shared_path("ants_sample")
