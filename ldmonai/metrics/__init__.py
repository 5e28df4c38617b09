"""Image metrics with the definitions of the challenges they come from."""

from ldmonai.metrics.surface import HausdorffDistanceMM, SurfaceDistanceMM, voxel_spacing
from ldmonai.metrics.synthrad import SynthRADMetric, image_metrics, masked_ms_ssim, mae, psnr, ssim

__all__ = ["HausdorffDistanceMM", "SurfaceDistanceMM", "voxel_spacing", "SynthRADMetric", "image_metrics", "mae", "masked_ms_ssim", "psnr", "ssim"]
