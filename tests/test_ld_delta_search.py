"""δ search: the grid plus refinement finds the drift that best matches the real samples."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from ldmonai.errors import LdmonaiError
from ldmonai.ld import l1_distance, search_delta

TRUE_DELTA = 0.037


def _real():
    return torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _generate(delta: float) -> torch.Tensor:
    """A stand-in generator whose samples are off by (δ - 0.037) in intensity, from fixed seeds."""
    g = torch.Generator().manual_seed(123)  # the same noise for every δ
    return torch.rand(24, 1, 8, 8, generator=g) + 4.0 * (delta - TRUE_DELTA)


def test_grid_then_refine_finds_the_matching_delta(tmp_path):
    result = search_delta(_generate, _real(), progress=False)
    grid = [r["delta"] for r in result.rows if r["stage"] == "grid"]
    assert np.allclose(grid, np.linspace(-0.2, 0.2, 9))
    refine = [r["delta"] for r in result.rows if r["stage"] == "refine"]
    assert len(refine) == 4 and all(0.0 <= d <= 0.1 for d in refine)
    # the refinement step is 0.1 / 5 = 0.02: the best δ is within one step of the truth
    assert abs(result.best - TRUE_DELTA) <= 0.02 and result.best not in grid and not result.at_edge
    table, plot = result.write(tmp_path)
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 13 and [float(r["delta"]) for r in rows] == sorted(float(r["delta"]) for r in rows)
    assert sum(int(r["best"]) for r in rows) == 1
    assert Image.open(plot).size[0] > 300


def test_distances():
    real = _real()
    assert l1_distance(real, real, "energy") == pytest.approx(0.0, abs=1e-12)
    assert l1_distance(real + 1.0, real, "energy") > 1.0
    # pairwise L1 prefers collapsing onto the centre; the energy distance does not
    centre = torch.full_like(real, 0.5)
    assert l1_distance(centre, real) < l1_distance(real, real)
    assert l1_distance(centre, real, "energy") > l1_distance(real, real, "energy")
    with pytest.raises(LdmonaiError, match="differ in shape"):
        l1_distance(real, torch.rand(2, 1, 4, 4))


def test_bad_search_input_is_clear():
    with pytest.raises(LdmonaiError, match="at least 2 points"):
        search_delta(_generate, _real(), grid=[0.1], progress=False)
    with pytest.raises(LdmonaiError, match="NaN"):
        search_delta(lambda d: torch.full((2, 1, 8, 8), float("nan")), _real(), progress=False)


def test_a_best_delta_at_the_edge_of_the_range_is_flagged(capsys):
    """True δ = 0.3 lies outside [-0.2, 0.2]: the search can only return the edge, and says so."""
    result = search_delta(lambda d: _generate(d - 0.3 + TRUE_DELTA), _real(), progress=False)
    assert result.best == pytest.approx(0.2) and result.at_edge
    assert "is at the edge of the searched range [-0.2, +0.2]" in capsys.readouterr().out
