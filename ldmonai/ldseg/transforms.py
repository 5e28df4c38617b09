"""Dictionary transforms LDSeg bundles chain around the model: checks before, outputs after."""

from __future__ import annotations

from typing import Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ldmonai.errors import LdmonaiError
from ldmonai.io.names import source_name
from ldmonai.ldseg.uncertainty import MAP_NAMES


class CheckSegmentationPaird(MapTransform):
    """Refuse a case the model cannot learn from, naming its file.

    Checks that the image has no NaN/inf values, that the label has the image's spatial
    shape, and that label values are integers in ``[0, num_classes)``.

    Args:
        num_classes: classes including background.
        image_key, label_key: keys of a loaded, channel-first pair.
        allow_missing_label: inference data may come without labels.
    """

    def __init__(
        self, num_classes: int, image_key: str = "image", label_key: str = "label", allow_missing_label: bool = False
    ) -> None:
        super().__init__([image_key], allow_missing_keys=False)
        self.num_classes = num_classes
        self.image_key = image_key
        self.label_key = label_key
        self.allow_missing_label = allow_missing_label

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.image_key]
        name = source_name(d, self.image_key)
        if not torch.isfinite(torch.as_tensor(image)).all():
            raise LdmonaiError("image contains NaN or infinite values", name, "fix or drop this case")
        if self.label_key not in d:
            if self.allow_missing_label:
                return d
            raise LdmonaiError(f"case has no {self.label_key!r}", name, f"add a {self.label_key!r} path for it to the datalist")
        label = torch.as_tensor(d[self.label_key])
        lname = source_name(d, self.label_key)
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise LdmonaiError(
                f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])} ({name})",
                lname,
                "resample the label onto the image grid (nearest neighbour)",
            )
        if label.shape[0] != 1:
            raise LdmonaiError(f"label has {label.shape[0]} channels, expected one channel of class ids", lname, "store labels as one integer map")
        if label.numel():
            lo, hi = float(label.min()), float(label.max())
            if lo < 0 or hi >= self.num_classes or not torch.equal(label, label.round()):
                raise LdmonaiError(
                    f"label values must be integers in [0, {self.num_classes - 1}], found range [{lo:g}, {hi:g}]",
                    lname,
                    f"remap the labels or set num_classes (now {self.num_classes})",
                )
        return d


class SplitUncertaintyd(MapTransform):
    """Split ``(C + 2, *S)`` inferer output into ``prob``, ``seg``, ``entropy`` and ``variance``.

    The new keys carry the metadata (affine, file name) of ``meta_key``'s tensor, so
    ``SaveImaged`` writes them on the input's grid.

    Args:
        keys: the inferer output key (usually ``pred``); it is replaced by the part named
            ``replace_with``.
        num_classes: C.
        meta_key: a key whose MetaTensor metadata the outputs inherit (usually ``image``).
        replace_with: ``prob`` for metrics that argmax themselves; ``seg`` where ``pred``
            must be the label map, as MONAI Label returns ``pred`` to the viewer.
    """

    def __init__(
        self, keys: KeysCollection = "pred", num_classes: int = 2, meta_key: str = "image", replace_with: str = "prob"
    ) -> None:
        super().__init__(keys)
        if replace_with not in ("prob", "seg", *MAP_NAMES):
            raise ValueError(f"replace_with must be prob, seg or one of {MAP_NAMES}, got {replace_with!r}")
        self.num_classes = num_classes
        self.meta_key = meta_key
        self.replace_with = replace_with

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        ref = d.get(self.meta_key)
        meta = dict(ref.meta) if isinstance(ref, MetaTensor) else {}
        for key in self.key_iterator(d):
            out = torch.as_tensor(d[key])
            c = self.num_classes
            if out.shape[0] != c + len(MAP_NAMES):
                raise ValueError(f"{key!r} has {out.shape[0]} channels; expected {c} classes + {len(MAP_NAMES)} maps")
            parts = {"prob": out[:c], "seg": out[:c].argmax(0, keepdim=True).to(torch.uint8)}
            for i, name in enumerate(MAP_NAMES):
                parts[name] = out[c + i : c + i + 1]
            for name, value in parts.items():
                d[name] = MetaTensor(value, meta=dict(meta))
            d[key] = d[self.replace_with]
        return d


class UncertaintySummaryd(MapTransform):
    """Add per-class uncertainty figures to ``data[result_key]``, a JSON-ready dict.

    MONAI Label returns one label file per request plus ``data["result"]`` as JSON, so the
    voxel maps cannot travel with the segmentation; their means can. For each class the
    mean entropy and variance over its predicted voxels, and over all voxels.

    Args:
        keys: the uncertainty maps, ``(1, *S)`` each.
        seg_key: the ``(1, *S)`` label map.
        result_key: where the summary goes.
        label_names: class index to name; indices are used where missing.
    """

    def __init__(
        self,
        keys: KeysCollection = MAP_NAMES,
        seg_key: str = "seg",
        result_key: str = "result",
        label_names: Mapping[int | str, str] | None = None,
    ) -> None:
        super().__init__(keys)
        self.seg_key = seg_key
        self.result_key = result_key
        self.label_names = {int(k): str(v) for k, v in (label_names or {}).items()}

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        seg = torch.as_tensor(d[self.seg_key])
        summary: dict[str, dict[str, float]] = {}
        for key in self.key_iterator(d):
            values = torch.as_tensor(d[key]).float()
            per = {"all": float(values.mean())}
            for c in torch.unique(seg).tolist():
                per[self.label_names.get(int(c), str(int(c)))] = float(values[seg == c].mean())
            summary[key] = per
        result = dict(d.get(self.result_key) or {})
        result["uncertainty"] = summary
        d[self.result_key] = result
        return d
