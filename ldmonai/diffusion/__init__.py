"""Sampling loops and noise helpers shared by LD and LDSeg (MONAI schedulers underneath)."""

from ldmonai.diffusion.latent_drift import LatentDriftScheduler
from ldmonai.diffusion.sampling import build_scheduler, denoise, invert, predict_original

__all__ = ["LatentDriftScheduler", "build_scheduler", "denoise", "invert", "predict_original"]
