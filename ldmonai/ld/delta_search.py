"""Choosing the latent drift δ: a coarse grid, then a finer 1-D search around its best point.

The criterion is an L1 distance between generated and real samples, estimated by Monte Carlo
over N samples. ``generate(delta)`` must draw its noise from fixed seeds, the same for every
δ (common random numbers): the curve then changes only because δ changes, and the search
is reproducible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ldmonai.errors import LdmonaiError
from ldmonai.io.atomic import atomic_write_csv

__all__ = ["DeltaSearchResult", "l1_distance", "search_delta"]


def l1_distance(generated: torch.Tensor, real: torch.Tensor, kind: str = "pairwise") -> float:
    """Mean per-pixel L1 distance between two sets of samples.

    Args:
        generated: ``(N, C, *S)`` samples.
        real: ``(M, C, *S)`` samples of the same ``C, *S``.
        kind: ``pairwise``, the mean over all (generated, real) pairs, E|g - r|, the
            paper's criterion; or ``energy``, the L1 energy distance
            2 E|g - r| - E|g - g'| - E|r - r'|, which is zero only when the two sets have the
            same distribution and so does not reward collapsing onto the real mean.
    """
    if generated.shape[1:] != real.shape[1:]:
        raise LdmonaiError(
            f"generated samples {tuple(generated.shape[1:])} and real samples {tuple(real.shape[1:])} differ in shape",
            None, "generate at the real slices' size and channels",
        )
    g = generated.reshape(generated.shape[0], -1).double()
    r = real.reshape(real.shape[0], -1).double()
    n = g.shape[1]
    cross = torch.cdist(g, r, p=1).mean() / n
    if kind == "pairwise":
        return float(cross)
    if kind == "energy":
        # V-statistics throughout: the estimate is then never negative and exactly 0 for equal sets
        within_g = torch.cdist(g, g, p=1).mean() / n
        within_r = torch.cdist(r, r, p=1).mean() / n
        return float(2 * cross - within_g - within_r)
    raise LdmonaiError(f"unknown distance {kind!r}", None, "use 'pairwise' or 'energy'")


@dataclass
class DeltaSearchResult:
    """Every evaluated δ with its distance, in evaluation order, and the best one."""

    best: float
    rows: list[dict] = field(default_factory=list)  # {"delta", "distance", "stage"}

    @property
    def at_edge(self) -> bool:
        """The best δ is the lowest or highest δ evaluated: the curve may still fall beyond the range,
        so the search did not find a minimum, only a boundary."""
        deltas = [r["delta"] for r in self.rows]
        return self.best in (min(deltas), max(deltas))

    def write(self, out_dir: str | os.PathLike, name: str = "delta_search") -> tuple[Path, Path]:
        """``<name>.csv`` (δ, distance, stage, best) and ``<name>.png`` (distance against δ)."""
        from ldmonai.io.preview import pyplot, save_figure

        out = Path(out_dir)
        table, plot = out / f"{name}.csv", out / f"{name}.png"
        atomic_write_csv(table, [{"delta": f"{r['delta']:.6g}", "distance": f"{r['distance']:.6g}", "stage": r["stage"],
                                  "best": int(r["delta"] == self.best)} for r in sorted(self.rows, key=lambda r: r["delta"])])
        fig, ax = pyplot().subplots(figsize=(5, 3.2), dpi=120)
        rows = sorted(self.rows, key=lambda r: r["delta"])
        ax.plot([r["delta"] for r in rows], [r["distance"] for r in rows], "-", color="0.6", lw=1)
        for stage, marker in (("grid", "o"), ("refine", "x")):
            pts = [r for r in rows if r["stage"] == stage]
            ax.plot([r["delta"] for r in pts], [r["distance"] for r in pts], marker, label=stage, ms=5)
        ax.axvline(self.best, color="C3", ls="--", lw=1, label=f"best δ = {self.best:+.4g}")
        ax.set_xlabel("latent drift δ")
        ax.set_ylabel("L1 distance to real")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, plot)
        return table, plot


def search_delta(
    generate: Callable[[float], torch.Tensor],
    real: torch.Tensor,
    low: float = -0.2,
    high: float = 0.2,
    num_grid: int = 9,
    num_refine: int = 4,
    distance: str = "pairwise",
    grid: Sequence[float] | None = None,
    progress: bool = True,
) -> DeltaSearchResult:
    """Grid search over δ, then a finer grid between the best point's neighbours.

    Args:
        generate: ``generate(delta)`` -> ``(N, C, *S)`` samples generated with that δ, from
            the same fixed seeds for every δ.
        real: ``(M, C, *S)`` real samples.
        low, high, num_grid: the coarse grid (default 9 points in [-0.2, 0.2]).
        num_refine: new points between the best grid point's neighbours (0: grid only).
        distance: see :func:`l1_distance`.
        grid: explicit coarse grid instead of ``low, high, num_grid``.

    Returns:
        a :class:`DeltaSearchResult`; ``write`` saves its table and plot.
    """
    coarse = [float(d) for d in (grid if grid is not None else np.linspace(low, high, num_grid))]
    if len(coarse) < 2:
        raise LdmonaiError(f"a δ grid needs at least 2 points, got {coarse}", None, "raise num_grid or give a longer grid")
    if real.shape[0] == 0:
        raise LdmonaiError("no real samples to compare with", None, "give at least one real slice")
    rows: list[dict] = []
    bar = tqdm(total=len(coarse) + num_refine, desc="δ search", disable=not progress)

    def evaluate(delta: float, stage: str) -> None:
        samples = generate(delta)
        if not torch.isfinite(samples).all():
            raise LdmonaiError(f"samples generated with δ={delta:+.4g} contain NaN or infinity", None,
                               "narrow the δ range or check the model")
        rows.append({"delta": delta, "distance": l1_distance(samples, real, distance), "stage": stage})
        bar.update(1)
        bar.set_postfix(delta=f"{delta:+.3f}", distance=f"{rows[-1]['distance']:.4f}")

    for d in coarse:
        evaluate(d, "grid")
    ordered = sorted(coarse)
    i = ordered.index(min(rows, key=lambda r: r["distance"])["delta"])
    lo, hi = ordered[max(0, i - 1)], ordered[min(len(ordered) - 1, i + 1)]
    seen = set(coarse)
    for d in np.linspace(lo, hi, num_refine + 2)[1:-1] if num_refine > 0 else []:
        if float(d) not in seen:
            evaluate(float(d), "refine")
    bar.close()
    best = min(rows, key=lambda r: r["distance"])["delta"]
    result = DeltaSearchResult(best=best, rows=rows)
    if result.at_edge:
        print(f"ldmonai: warning: the best δ ({best:+.4g}) is at the edge of the searched range [{min(ordered):+.4g}, "
              f"{max(ordered):+.4g}]: the distance may keep falling beyond it; widen the range (delta_low, delta_high) "
              "or check the distance (energy does not reward collapse)", flush=True)
    return result
