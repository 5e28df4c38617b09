"""LD: Latent Drifting for counterfactual 2D slice synthesis (Yeganeh et al., CVPR 2025).

The drift itself is a scheduler wrapper shared with the diffusion loops
(:class:`ldmonai.diffusion.latent_drift.LatentDriftScheduler`); this package holds what is
specific to LD: the text-to-image model, prompts, fine-tuning schemes, editing, choosing δ,
and the functions the bundle's runs call (:mod:`ldmonai.ld.pipeline`).
"""

from ldmonai.diffusion.latent_drift import LatentDriftScheduler
from ldmonai.ld.delta_search import DeltaSearchResult, l1_distance, search_delta
from ldmonai.ld.editing import Pix2PixZero, edit_direction
from ldmonai.ld.finetune import SCHEMES, dreambooth_loss, prepare_scheme
from ldmonai.ld.model import LatentDiffusion
from ldmonai.ld.prompts import PromptBuilder
from ldmonai.ld.text_encoder import TinyTextEncoder

__all__ = [
    "DeltaSearchResult", "LatentDiffusion", "LatentDriftScheduler", "Pix2PixZero", "PromptBuilder", "SCHEMES",
    "TinyTextEncoder", "dreambooth_loss", "edit_direction", "l1_distance", "prepare_scheme", "search_delta",
]
