"""LD experiment: pretrained -> fine-tuned with LD off, with the searched δ, and with a fixed δ, over seeds.

Every run goes through the LD bundle itself (``python -m monai.bundle run``). For each seed:

1. general-domain pretraining on grey crops of scikit-image's sample photos (``pretrain.json``),
   or, with ``--pretrain-data brain``, on the brain slices themselves (the controlled experiment:
   no domain gap for δ to bridge);
2. brain slices: axial slices of the MNI152 template (nilearn wheel), plus, where
   ``../shared/data/ants_sample`` exists, Colin27 (``ch2.nii.gz``) and the six real slices;
3. three fine-tunings from the same pretrained weights, data, seed and iterations:
   ``ld_off`` (δ = 0), ``ld_search`` (``--delta search``: δ searched on the pretrained model
   against the training slices, the paper's workflow) and ``ld_fixed`` (``--delta``, default 0.1);
4. FID and KID of slices generated at the δ each model was trained with (the inference default)
   against the real validation slices, on the same features for every arm (offline random
   ResNet features unless ``--feature-weights``);
5. wall time of every stage; then mean ± sd over seeds.

    python benchmarks/ld.py                      # tiny preset, 3 seeds, CPU, about 15 minutes
    python benchmarks/ld.py --seeds 0 --finetune-epochs 40 --json ld.json

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


ARMS = ("ld_off", "ld_search", "ld_fixed")


def run_seed(work: Path, seed: int, args, times: dict) -> dict:
    """One seed: pretraining, the three fine-tunings and their evaluations; returns {arm: metrics}."""
    sizes = {"image_size": args.size, "seed": seed}
    pretrain_data = work / ("natural" if args.pretrain_data == "natural" else "brain")
    times[f"pretrain_s{seed}"] = bundle(work, ["train.json", "pretrain.json"], f"pretrain_s{seed}.log",
                                        dataset_dir=pretrain_data, ckpt_dir=work / f"models_s{seed}",
                                        output_dir=work / f"runs_pretrain_s{seed}", ae_epochs=args.ae_epochs,
                                        epochs=args.pretrain_epochs, **sizes)
    common = {"dataset_dir": work / "brain", "pretrained_path": work / f"models_s{seed}" / "pretrained.pt", **sizes}
    results = {}
    for arm in ARMS:
        ld = {"ld_off": {"use_latent_drift": False}, "ld_search": {"delta": "search"},
              "ld_fixed": {"delta": args.delta}}[arm]
        ckpt, runs = work / f"models_{arm}_s{seed}", work / f"runs_{arm}_s{seed}"
        times[f"finetune_{arm}_s{seed}"] = bundle(work, ["train.json"], f"finetune_{arm}_s{seed}.log", ckpt_dir=ckpt,
                                                  output_dir=runs, epochs=args.finetune_epochs, **ld, **common)
        ev = work / f"eval_{arm}_s{seed}"
        extra = {"feature_weights": args.feature_weights} if args.feature_weights else {}
        times[f"evaluate_{arm}_s{seed}"] = bundle(work, ["inference.json", "evaluate.json"], f"eval_{arm}_s{seed}.log",
                                                  output_dir=ev, ckpt_path=ckpt / "model.pt", eval_samples=args.eval_samples,
                                                  num_inference_steps=args.steps, **common, **extra)
        results[arm] = json.loads((ev / "metrics.json").read_text())
        if arm == "ld_search":
            results[arm]["delta_curve"] = (runs / "delta_search" / "delta_search.csv").read_text()
    return results


def mean_sd(values: list[float]) -> tuple[float, float]:
    import numpy as np

    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--natural-images", type=int, default=256)
    p.add_argument("--brain-slices", type=int, default=96)
    p.add_argument("--pretrain-data", choices=("natural", "brain"), default="natural",
                   help="natural photos (the paper's setting: a domain gap) or the brain slices (no gap)")
    p.add_argument("--ae-epochs", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--delta", type=float, default=0.1, help="the δ of the fixed-δ arm")
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
    per_seed = {seed: run_seed(work, seed, args, times) for seed in args.seeds}

    first = per_seed[args.seeds[0]]["ld_off"]
    print(f"\n{first['num_real']} real validation slices ({'MNI152 + Colin27 + 6 real slices' if images else 'MNI152'}), "
          f"{args.eval_samples} generated per model, {args.size}x{args.size}, {args.steps} DDIM steps, "
          f"pretrained on {args.pretrain_data}; seeds {args.seeds}; features: {first['features']}")
    summary = {}
    for arm in ARMS:
        rows = [per_seed[s][arm] for s in args.seeds]
        summary[arm] = {"fid": mean_sd([r["fid"] for r in rows]), "kid": mean_sd([r["kid"] for r in rows]),
                        "delta": [r["delta"] for r in rows]}
        fid, kid = summary[arm]["fid"], summary[arm]["kid"]
        print(f"{arm:10s} FID {fid[0]:8.2f} ± {fid[1]:.2f}   KID {kid[0]:.4f} ± {kid[1]:.4f}   "
              f"δ per seed {summary[arm]['delta']}   FID per seed {[round(r['fid'], 2) for r in rows]}")
    print("wall time, s: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"hardware: {hardware('cpu')}; working folder: {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hardware": hardware("cpu"), "times": times,
                                               "summary": summary, "per_seed": per_seed}, indent=2, default=str))


if __name__ == "__main__":
    main()
