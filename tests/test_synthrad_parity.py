"""The SynthRAD2025 image metrics against the official evaluation code's recorded values.

``../shared/data/synthrad_metric_parity`` holds four cases (float32 and int16, sizes below and above
the 97-voxel MS-SSIM padding limit, masks 0/1 and 0/255, values outside [-1024, 3071]) and the MAE,
PSNR and MS-SSIM that ``SynthRAD2025/evaluation`` (``image_metrics.py``, commit 17cac47) gives for
each, on the arrays as SimpleITK reads them. Parity means a relative error below 1e-6.
"""

import json

import pytest
import SimpleITK as sitk

from conftest import shared_path
from ldmonai.metrics.synthrad import image_metrics

CASES = ["c1_float_small", "c2_int16_pad", "c3_float_large", "c4_int16_clip"]


@pytest.mark.parametrize("case", CASES)
def test_metrics_equal_the_official_code(case):
    root = shared_path("synthrad_metric_parity")
    expected = json.loads((root / "expected.json").read_text())["expected"][case]
    read = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(root / case / f"{name}.mha")))
            for name in ("ct", "sct", "mask")}
    ours = image_metrics(read["ct"], read["sct"], read["mask"], names=("mae", "psnr", "ms_ssim"))
    for metric, value in expected.items():
        assert ours[metric] == pytest.approx(value, rel=1e-6, abs=0), (case, metric, ours[metric], value)
