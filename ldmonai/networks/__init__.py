"""Small network pieces that more than one model family builds on."""

from ldmonai.networks.conv_pyramid import ConvDown, ConvUp
from ldmonai.networks.replay import replayer
from ldmonai.networks.residual import ResidualGenerator
from ldmonai.networks.utils import unwrap

__all__ = ["ConvDown", "ConvUp", "ResidualGenerator", "replayer", "unwrap"]
