"""CT physics for sparse-view reconstruction: a differentiable ray-driven projector (parallel
and fan beam) and filtered back-projection, in PyTorch.

Volumes are reconstructed slice by slice (axial slices are independent in 2D parallel and
fan-beam geometry), so ``(B, 1, X, Y, Z)`` volumes and ``(B, 1, X, Y)`` slices share the code.
Lengths are in pixels: a line integral through a 1-valued pixel adds 1.

The projector samples each ray with ``grid_sample``, so autograd gives its adjoint (used by
data consistency) and it runs on any device without a CUDA extension.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Projector", "hu_to_attenuation", "attenuation_to_hu"]


def hu_to_attenuation(hu: torch.Tensor) -> torch.Tensor:
    """HU -> attenuation relative to water (air 0, water 1), the quantity a scanner integrates."""
    return (hu / 1000.0 + 1.0).clamp_min(0.0)


def attenuation_to_hu(mu: torch.Tensor) -> torch.Tensor:
    return (mu - 1.0) * 1000.0


def _ramp_kernel(n: int, spacing: float, window: str, device, dtype) -> torch.Tensor:
    """Frequency response of the band-limited ramp filter (Kak & Slaney eq. 3.61), sampled on
    the FFT grid of length ``n``: built in the spatial domain, so there is no DC offset."""
    k = torch.arange(-(n // 2), n - n // 2, device=device, dtype=dtype)
    h = torch.zeros_like(k)
    h[k == 0] = 1.0 / (4.0 * spacing**2)
    odd = (k % 2) != 0
    h[odd] = -1.0 / (math.pi**2 * (k[odd] * spacing) ** 2)
    resp = torch.fft.rfft(torch.fft.ifftshift(h)).real * spacing
    freq = torch.fft.rfftfreq(n, device=device).to(dtype)  # 0 .. 0.5 cycles/sample
    if window == "shepp-logan":
        resp = resp * torch.special.sinc(freq)
    elif window == "hann":
        resp = resp * 0.5 * (1 + torch.cos(2 * math.pi * freq))
    elif window != "ram-lak":
        raise ValueError(f"unknown filter window {window!r}: ram-lak, shepp-logan or hann")
    return resp


class Projector(nn.Module):
    """Sinograms of 2D slices and their filtered back-projection.

    Args:
        image_size: ``(X, Y)`` of the slices.
        num_views: projection angles (18, 36, 72 for sparse view; several hundred for full).
        geometry: ``parallel`` (angles over 180 degrees) or ``fan`` (flat detector, angles
            over 360 degrees).
        num_detectors: detector bins; default covers the slice diagonal.
        source_distance: fan beam, source to isocentre in pixels; default twice the diagonal.
        detector_distance: fan beam, source to detector; default 1.5 x ``source_distance``.
        samples_per_pixel: ray samples per pixel of path length (2 resolves the pixel grid).

    Shapes: ``forward`` ``(N, 1, X, Y[, Z])`` -> ``(N, 1, views, detectors[, Z])``;
    ``fbp`` the inverse shape mapping.
    """

    def __init__(
        self,
        image_size: Sequence[int],
        num_views: int,
        geometry: str = "parallel",
        num_detectors: int | None = None,
        source_distance: float | None = None,
        detector_distance: float | None = None,
        samples_per_pixel: float = 2.0,
    ) -> None:
        super().__init__()
        if geometry not in ("parallel", "fan"):
            raise ValueError(f"geometry must be 'parallel' or 'fan', got {geometry!r}")
        if num_views < 1:
            raise ValueError(f"num_views must be positive, got {num_views}")
        self.image_size = tuple(int(s) for s in image_size)
        self.geometry = geometry
        self.num_views = int(num_views)
        diag = math.hypot(*self.image_size)
        self.radius = diag / 2.0
        self.num_detectors = int(num_detectors or math.ceil(diag) + 2)
        self.source_distance = float(source_distance or 2.0 * diag)
        self.detector_distance = float(detector_distance or 1.5 * self.source_distance)
        span = math.pi if geometry == "parallel" else 2.0 * math.pi
        self.register_buffer("angles", torch.arange(self.num_views, dtype=torch.float64) * span / self.num_views, persistent=False)
        # detector bin centres: on the detector for fan beam; pixels for parallel beam
        iso = self.source_distance / self.detector_distance if geometry == "fan" else 1.0
        self.detector_spacing = 1.0 / iso  # one pixel at the isocentre
        u = (torch.arange(self.num_detectors, dtype=torch.float64) - (self.num_detectors - 1) / 2.0) * self.detector_spacing
        self.register_buffer("detector", u, persistent=False)
        self.num_samples = int(math.ceil(2.0 * self.radius * samples_per_pixel))
        # every ray is sampled over the chord of the slice's circumscribed circle
        self.step_length = 2.0 * self.radius / self.num_samples
        self.register_buffer("_ray_grid", self._rays().float(), persistent=False)

    # -- geometry -------------------------------------------------------------------
    def _to_grid(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # pixel-centred world coordinates -> grid_sample's [-1, 1] (align_corners=True);
        # grid_sample's last dim is (w, h) = (Y axis, X axis) for an (X, Y) slice.
        sx, sy = (self.image_size[0] - 1) / 2.0, (self.image_size[1] - 1) / 2.0
        return torch.stack([y / max(sy, 1e-9), x / max(sx, 1e-9)], dim=-1)

    def _rays(self) -> torch.Tensor:
        """Sample points of every ray, ``(views * detectors, samples, 2)``, in grid units."""
        th = self.angles[:, None, None]
        u = self.detector[None, :, None]
        steps = (torch.arange(self.num_samples, dtype=torch.float64) + 0.5) / self.num_samples
        if self.geometry == "parallel":
            r = (steps * 2.0 - 1.0) * self.radius
            x = u * torch.cos(th) - r * torch.sin(th)
            y = u * torch.sin(th) + r * torch.cos(th)
        else:
            d_so, d_sd = self.source_distance, self.detector_distance
            sx, sy = d_so * torch.cos(th), d_so * torch.sin(th)
            px = (d_so - d_sd) * torch.cos(th) - u * torch.sin(th)
            py = (d_so - d_sd) * torch.sin(th) + u * torch.cos(th)
            length = torch.sqrt((px - sx) ** 2 + (py - sy) ** 2)
            dx, dy = (px - sx) / length, (py - sy) / length
            # only the part of each ray that can cross the slice's circumscribed circle
            l = d_so - self.radius + steps[None, None] * 2.0 * self.radius
            x, y = sx + l * dx, sy + l * dy
        x, y = torch.broadcast_tensors(x, y)
        return self._to_grid(x, y).reshape(-1, self.num_samples, 2)

    # -- shape helpers ------------------------------------------------------------------
    @staticmethod
    def _slices(t: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """``(N, 1, A, B[, Z])`` -> ``(N*Z, 1, A, B)`` and what is needed to undo it."""
        if t.ndim == 4:
            return t, None
        if t.ndim != 5 or t.shape[1] != 1:
            raise ValueError(f"expected (N, 1, X, Y) or (N, 1, X, Y, Z), got {tuple(t.shape)}")
        n, _, a, b, z = t.shape
        return t.permute(0, 4, 1, 2, 3).reshape(n * z, 1, a, b), (n, z)

    @staticmethod
    def _unslice(t: torch.Tensor, undo: tuple | None) -> torch.Tensor:
        if undo is None:
            return t
        n, z = undo
        return t.reshape(n, z, 1, *t.shape[2:]).permute(0, 2, 3, 4, 1)

    # -- operators --------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Line integrals of ``image`` along every ray."""
        slices, undo = self._slices(image)
        if tuple(slices.shape[2:]) != self.image_size:
            raise ValueError(f"projector built for slices {self.image_size}, got {tuple(slices.shape[2:])}")
        grid = self._ray_grid.to(slices.dtype)[None].expand(slices.shape[0], -1, -1, -1)
        samples = F.grid_sample(slices, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        sino = samples.sum(-1).reshape(slices.shape[0], 1, self.num_views, self.num_detectors) * self.step_length
        return self._unslice(sino, undo)

    def fbp(self, sinogram: torch.Tensor, filter_window: str = "ram-lak") -> torch.Tensor:
        """Filtered back-projection of a sinogram from :meth:`forward`'s geometry."""
        sino, undo = self._slices(sinogram)
        dtype = sino.dtype
        u_iso = self.detector.to(sino.device, dtype)
        spacing = self.detector_spacing
        if self.geometry == "fan":
            # rescale the detector to the isocentre, then cosine-weight (Kak & Slaney 3.4.2)
            scale = self.source_distance / self.detector_distance
            u_iso, spacing = u_iso * scale, spacing * scale
            sino = sino * (self.source_distance / torch.sqrt(self.source_distance**2 + u_iso**2))
        n = 2 ** math.ceil(math.log2(2 * self.num_detectors))
        resp = _ramp_kernel(n, spacing, filter_window, sino.device, dtype)
        filtered = torch.fft.irfft(torch.fft.rfft(sino, n=n, dim=-1) * resp, n=n, dim=-1)[..., : self.num_detectors]
        if self.geometry == "fan":
            filtered = filtered * 0.5
        # back-projection: every pixel reads its detector coordinate in every view
        xs = torch.arange(self.image_size[0], device=sino.device, dtype=dtype) - (self.image_size[0] - 1) / 2.0
        ys = torch.arange(self.image_size[1], device=sino.device, dtype=dtype) - (self.image_size[1] - 1) / 2.0
        x, y = torch.meshgrid(xs, ys, indexing="ij")
        x, y = x.reshape(1, -1), y.reshape(1, -1)
        th = self.angles.to(sino.device, dtype)[:, None]
        c, s = torch.cos(th), torch.sin(th)
        if self.geometry == "parallel":
            t = x * c + y * s
            weight = torch.ones_like(t)
        else:
            dist = self.source_distance - (x * c + y * s)  # along the central ray
            t = self.source_distance * (-x * s + y * c) / dist
            weight = (self.source_distance / dist) ** 2
        half = (self.num_detectors - 1) / 2.0
        gx = t / (half * spacing)
        gy = (torch.arange(self.num_views, device=sino.device, dtype=dtype)[:, None] / max(self.num_views - 1, 1)) * 2 - 1
        grid = torch.stack([gx, gy.expand_as(gx)], dim=-1)[None].expand(filtered.shape[0], -1, -1, -1)
        values = F.grid_sample(filtered, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        span = math.pi if self.geometry == "parallel" else 2.0 * math.pi
        image = (values * weight).sum(2) * (span / self.num_views)
        image = image.reshape(filtered.shape[0], 1, *self.image_size)
        return self._unslice(image, undo)

    def backproject(self, sinogram: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`forward` (unfiltered back-projection), through autograd."""
        shape = list(sinogram.shape)
        if sinogram.ndim == 4:
            shape[2:] = self.image_size
        else:
            shape[2:4] = self.image_size
        with torch.enable_grad():
            probe = torch.zeros(shape, dtype=sinogram.dtype, device=sinogram.device, requires_grad=True)
            (grad,) = torch.autograd.grad(self(probe), probe, grad_outputs=sinogram)
        return grad

    def refine(self, image: torch.Tensor, sinogram: torch.Tensor, steps: int = 1, relaxation: float = 1.0) -> torch.Tensor:
        """Data consistency by SIRT: ``x += lambda * C A^T R (p - A x)``, ``steps`` times.

        ``R`` and ``C`` are the inverse ray lengths and inverse pixel sensitivities, which
        makes the iteration converge for ``0 < relaxation < 2`` without a step-size search.
        It pulls the generator's output toward the measured views, and changes nothing
        that the views cannot see.
        """
        ones = torch.ones_like(image[:1])
        rows = self(ones).clamp_min(1e-6)
        cols = self.backproject(torch.ones_like(rows)).clamp_min(1e-6)
        for _ in range(steps):
            image = image + relaxation * self.backproject((sinogram - self(image)) / rows) / cols
        return image
