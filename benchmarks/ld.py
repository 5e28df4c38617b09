"""LD experiment: fine-tuning with and without the latent drift, on brain slices that install offline.

One run, through the LD bundle itself (``python -m monai.bundle run``):

1. general-domain pretraining on grey crops of scikit-image's sample photos (``pretrain.json``);
2. brain slices: axial slices of the MNI152 template (nilearn wheel), plus, where
   ``../shared/data/ants_sample`` exists, Colin27 (``ch2.nii.gz``) and the six real slices;
3. two fine-tunings from the same pretrained weights, data, seed and iterations, LD off
   (δ = 0) and LD on (``--delta``);
4. for each: FID and KID of generated slices against the real validation slices (offline
   random ResNet features unless ``--feature-weights``), and for LD on the δ-search curve;
5. wall time of every stage.

    python benchmarks/ld.py                      # tiny preset, CPU, about 10 minutes
    python benchmarks/ld.py --size 64 --finetune-epochs 40

Needs the ``[samples]`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.measure import hardware, run_bundle  # noqa: E402

CONFIGS = ROOT / "bundles" / "ld_slice_generator" / "configs"
SHARED = ROOT.parent / "shared" / "data" / "ants_sample"


def bundle(work: Path, configs: list[str], log: str, **overrides) -> float:
    return run_bundle([CONFIGS / c for c in configs], {"bundle_root": work, **overrides}, work / log)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--natural-images", type=int, default=256)
    p.add_argument("--brain-slices", type=int, default=96)
    p.add_argument("--ae-epochs", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--delta", type=float, default=0.1, help="the drift of the LD-on fine-tuning")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps when sampling")
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--feature-weights", help="local ResNet-18 state dict for FID/KID (default: offline random features)")
    p.add_argument("--work", help="working folder (default: a new temporary folder)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    from ldmonai.data import make_brain_slices, make_natural_slices

    work = Path(args.work or tempfile.mkdtemp(prefix="ldmonai_ld_bench_"))
    times = {}
    t0 = time.perf_counter()
    make_natural_slices(work / "natural", num_images=args.natural_images, size=args.size)
    volumes = [SHARED / "ch2.nii.gz"] if (SHARED / "ch2.nii.gz").is_file() else []
    images = sorted(SHARED.glob("r*slice.jpg")) if SHARED.is_dir() else []
    make_brain_slices(work / "brain", num_slices=args.brain_slices, size=args.size, volumes=volumes, images=images,
                      val_fraction=0.25)
    times["data"] = time.perf_counter() - t0
    sizes = {"image_size": args.size}
    times["pretrain"] = bundle(work, ["train.json", "pretrain.json"], "pretrain.log", dataset_dir=work / "natural",
                               ae_epochs=args.ae_epochs, epochs=args.pretrain_epochs, **sizes)
    common = {"dataset_dir": work / "brain", "pretrained_path": work / "models" / "pretrained.pt", **sizes}
    results = {}
    for name, delta in (("ld_off", 0.0), ("ld_on", args.delta)):
        ckpt = work / f"models_{name}"
        times[f"finetune_{name}"] = bundle(work, ["train.json"], f"finetune_{name}.log", ckpt_dir=ckpt,
                                           output_dir=work / f"runs_{name}", epochs=args.finetune_epochs,
                                           use_latent_drift=delta != 0.0, delta=delta, **common)
        run = {"ckpt_path": ckpt / "model.pt", "num_inference_steps": args.steps, **common}
        ev = work / f"eval_{name}"
        extra = {"feature_weights": args.feature_weights} if args.feature_weights else {}
        times[f"evaluate_{name}"] = bundle(work, ["inference.json", "evaluate.json"], f"eval_{name}.log", output_dir=ev,
                                           delta=delta, eval_samples=args.eval_samples, **run, **extra)
        results[name] = json.loads((ev / "metrics.json").read_text())
        if delta:
            search = work / f"search_{name}"
            times[f"delta_search_{name}"] = bundle(work, ["inference.json", "delta_search.json"], f"search_{name}.log",
                                                   output_dir=search, **run)
            results[name]["delta_search"] = json.loads((search / "delta_search.json").read_text())
            results[name]["delta_curve"] = (search / "delta_search.csv").read_text()

    off, on = results["ld_off"], results["ld_on"]
    print(f"\n{off['num_real']} real validation slices ({'MNI152 + Colin27 + 6 real slices' if images else 'MNI152'}), "
          f"{args.eval_samples} generated per model, {args.size}x{args.size}, {args.steps} DDIM steps; "
          f"features: {off['features']}")
    print(f"LD off (δ = 0)      FID {off['fid']:9.2f}  KID {off['kid']:.4f} ± {off['kid_std']:.4f}")
    print(f"LD on  (δ = {args.delta:+.2f})  FID {on['fid']:9.2f}  KID {on['kid']:.4f} ± {on['kid_std']:.4f}")
    print(f"FID ratio LD on / LD off: {on['fid'] / off['fid']:.3f}")
    print(f"δ search (LD on model): best δ = {on['delta_search']['best_delta']:+.4f}")
    print(on["delta_curve"])
    print("wall time, s: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"hardware: {hardware('cpu')}; working folder: {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hardware": hardware("cpu"), "times": times,
                                               "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
