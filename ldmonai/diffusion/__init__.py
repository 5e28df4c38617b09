"""Sampling loops and noise helpers shared by LD and LDSeg (MONAI schedulers underneath)."""

from ldmonai.diffusion.sampling import build_scheduler, denoise, predict_original

__all__ = ["build_scheduler", "denoise", "predict_original"]
