"""Calling a segmenter the way MONAI workflows and MONAI Label call networks: ``inferer(inputs, network)``."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.inferers import Inferer, SlidingWindowInferer

from ldmonai.networks import unwrap


class SegmenterInferer(Inferer):
    """Sample a :class:`~ldmonai.ldseg.segmenter.Segmenter`, whole-image or by sliding window.

    Args:
        roi_size: window size, a multiple of the model's downsampling factor; None runs
            on the whole image (its size must then be such a multiple).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction.
        num_samples: N samples per image (all N in one batched pass).
        uncertainty: return ``(B, C + 2, *S)`` (mean probability, entropy, variance)
            instead of ``(B, C, *S)`` mean probability.
        mode: window blending, ``constant`` or ``gaussian`` (the default: no seams where
            windows meet).
        seed: seed of the sampling noise, drawn afresh for every call: the same image gives
            the same label map on every request (what a viewer expects), and ``N`` samples
            still differ from each other. None draws from the global random state.

    Returns (``__call__``): a tensor that ``SplitUncertaintyd`` takes apart when
    ``uncertainty`` is set.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        num_samples: int = 1,
        uncertainty: bool = False,
        mode: str = "gaussian",
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.num_samples = num_samples
        self.uncertainty = uncertainty
        self.window = (
            None
            if roi_size is None
            else SlidingWindowInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode)
        )

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        model = unwrap(network)
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        if self.uncertainty:
            def fn(x):
                return model.predict_with_uncertainty(x, self.num_samples, generator=generator)
        else:
            def fn(x):
                return model.sample(x, self.num_samples, generator=generator).mean(0)
        with torch.no_grad():
            return fn(inputs) if self.window is None else self.window(inputs, fn)
