import os
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


@pytest.fixture(scope="session")
def dcm_qa_nih() -> Path:
    return shared_path("dcm_qa_nih")


@pytest.fixture(scope="session")
def ants_sample() -> Path:
    """MNI152 1 mm brain, its 116-label atlas on the same grid, and Colin27 (read-only)."""
    return shared_path("ants_sample")
