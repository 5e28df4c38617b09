"""ldmonai: a MONAI bundle toolkit for generative medical imaging.

Three model families (Latent Drifting, LDSeg, GDM) packaged as MONAI bundles, plus the
ITK/SimpleITK preprocessing that feeds them. Submodules import lazily so that
``ldmonai prep`` never pays for torch.
"""

__version__ = "0.1.0"

from ldmonai.errors import LdmonaiError

__all__ = ["LdmonaiError", "__version__"]
