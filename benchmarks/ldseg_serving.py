"""How long the LDSeg bundle takes per request on a whole 1 mm head, beside the UNet baseline.

What MONAI Label runs per request, in one warm process: the bundle's ``inference.json``
preprocessing, sliding-window inferer and postprocessing (back on the input grid), without
the HTTP layer. The input is the MNI152 2009a T1 from the nilearn wheel (197x233x189 at 1 mm,
skull and all). LDSeg uses the shipped ``demo_tiny_3d.pt`` (4 mm, its settings read from the
checkpoint); the UNet (``configs/unet.json``, tiny preset) has random weights saved with the same
4 mm setting, since the cost of a forward pass does not depend on the weights. Each method runs
the request three times, and the best of the last two is reported with the first (which pays
for the trace and allocator warm-up). ``--native`` also times LDSeg on the 1 mm grid (no
resampling), the way the first version served it.

    python benchmarks/ldseg_serving.py
    python benchmarks/ldseg_serving.py --samples 1 8 --native
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "ldseg" / "configs"
SHIPPED = ROOT / "bundles" / "ldseg" / "models" / "demo_tiny_3d.pt"


def mni_head(folder: Path) -> Path:
    import nibabel as nib
    import numpy as np

    from ldmonai.prep.templates import MNI152_FILES, nilearn_template_dir

    image = nib.load(nilearn_template_dir() / MNI152_FILES["t1"])
    path = folder / "mni_head.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine), path)
    return path


def unet_weights(folder: Path) -> Path:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "unet.json")])
    parser.update({"spatial_dims": 3, "num_classes": 4, "device": "$torch.device('cpu')", "ckpt_path": str(folder / "none.pt")})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    path = folder / "unet.pt"
    torch.save({"model": net.state_dict(), "config": {"spatial_dims": 3, "num_classes": 4, "spacing": [4.0, 4.0, 4.0]}}, path)
    return path


def time_requests(configs: list[str], overrides: dict, repeats: int = 3) -> list[float]:
    """Wall seconds of each run of the bundle's evaluator over the one input (one warm process)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(overrides)
    times = []
    for i in range(repeats):
        # a fresh evaluator each time, as MONAI Label builds its transforms per request; resume off
        # so every run does the work
        parser["output_dir"] = overrides["output_dir"] + f"/{i}"
        parser.parse()
        evaluator = parser.get_parsed_content("evaluator", instantiate=True)
        start = time.perf_counter()
        evaluator.run()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 8], help="LDSeg samples per request")
    parser.add_argument("--native", action="store_true", help="also run LDSeg on the 1 mm grid (slow)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        head = mni_head(tmp)
        base = {"device": "$torch.device('cpu')", "input": str(head), "resume": False, "spatial_dims": 3}
        runs = [(f"LDSeg, {n} sample{'s' if n > 1 else ''}, 4 mm", [str(CONFIGS / "inference.json")],
                 {"ckpt_path": str(SHIPPED), "num_samples": n}) for n in args.samples]
        runs.append(("UNet (tiny), 4 mm", [str(CONFIGS / "inference.json"), str(CONFIGS / "unet.json")],
                     {"ckpt_path": str(unet_weights(tmp))}))
        if args.native:
            runs.append(("LDSeg, 1 sample, 1 mm grid (first version's way)", [str(CONFIGS / "inference.json")],
                         {"ckpt_path": str(SHIPPED), "num_samples": 1, "spacing": None}))
        for name, configs, extra in runs:
            times = time_requests(configs, {**base, **extra, "output_dir": str(tmp / "out" / name.replace(" ", "_"))})
            rows.append({"method": name, "first_s": round(times[0], 2), "warm_s": round(min(times[1:]), 2)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| request on a 1 mm head (197x233x189) | first request, s | warm request, s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['first_s']} | {r['warm_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
