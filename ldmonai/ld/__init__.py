"""LD: Latent Drifting for counterfactual 2D slice synthesis (Yeganeh et al., CVPR 2025).

The drift itself is a scheduler wrapper shared with the diffusion loops
(:class:`ldmonai.diffusion.latent_drift.LatentDriftScheduler`); this package holds what is
specific to LD: choosing δ, and (to come) prompts, fine-tuning schemes and editing.
"""

from ldmonai.diffusion.latent_drift import LatentDriftScheduler
from ldmonai.ld.delta_search import DeltaSearchResult, l1_distance, search_delta

__all__ = ["DeltaSearchResult", "LatentDriftScheduler", "l1_distance", "search_delta"]
