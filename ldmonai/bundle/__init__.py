"""Working with the MONAI bundles under ``bundles/``: packing a trained, self-contained copy."""

from ldmonai.bundle.pack import pack_bundle

__all__ = ["pack_bundle"]
