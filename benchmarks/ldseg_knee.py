"""LDSeg against the UNet on real knee MRI: 4-fold cross-validation, input noise, calibration.

The four shared knee cases (``../shared/data/ldseg_knee``, labels 0, 1, 2; never shipped) are
resampled with MONAI's ``Spacingd`` to a coarse grid (4 mm by default: 60x26x40, padded to a
multiple of 8), so that 3 seeds x 4 folds x every method fit in an hour of 2 CPU cores. Each
fold trains on three cases and tests on the fourth, whole volumes, batch 2, random flips.

Every method gets the same wall-clock training budget (``--budget-s``, one thread each, two
runs side by side), and the UNet also runs to convergence of its loss. Test: Dice and HD95 (mm)
per class at input noise sigma in {0, 0.05, 0.1, 0.2} (on intensities scaled to [0, 1]), and the
AUROC of the voxelwise entropy for predicting misclassified voxels (LDSeg: entropy of the mean
of ``--samples`` samples; UNet: entropy of its softmax). LDSeg samples with a fixed seed.

Rows (``--methods``):
    unet           MONAI UNet (16/32/64, one residual unit), CE + 2 Dice; converged within the budget
    ldseg          LDSeg as the bundle trains it (z0 prediction, standardised latent, EMA)
    ldseg_long     the same, trained 3x the budget (towards convergence)
    ldseg_eps      ... predicting the noise, decoding z_t - eps_hat (the reference's objective)
    ldseg_tanh     ... with the tanh-squashed latent instead of the standardised one
    ldseg_noema    ... sampling with the trained denoiser instead of its EMA
    ldseg_v0       the first version: tanh latent, noise prediction, clamped x0 decoded, no EMA

    python benchmarks/ldseg_knee.py                          # all rows, 3 seeds, 4 folds
    python benchmarks/ldseg_knee.py --methods unet ldseg --seeds 0
    python benchmarks/ldseg_knee.py --report runs.jsonl      # the tables from saved runs

Results go to a JSON-lines file, one run per line; a rerun skips the runs already there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ldseg_knee"
SIGMAS = (0.0, 0.05, 0.1, 0.2)
TINY = dict(latent_channels=4, embed_channels=16, encoder_channels=[16, 32], denoiser_channels=[32, 64],
            denoiser_attention=[False, False], denoiser_res_blocks=1, norm_num_groups=8, num_head_channels=8)
VARIANTS = {
    "ldseg": {},
    "ldseg_long": {},
    "ldseg_eps": {"prediction_type": "epsilon", "decode_from": "residual"},
    "ldseg_tanh": {"latent_norm": "tanh"},
    "ldseg_noema": {"ema_decay": None},
    "ldseg_v0": {"latent_norm": "tanh", "prediction_type": "epsilon", "decode_from": "x0", "ema_decay": None},
}


def load_cases(spacing: float) -> list[tuple]:
    """``[(image (1, 1, *S), label (1, 1, *S), name)]`` on a ``spacing`` mm grid, padded to x8."""
    from monai import transforms as T

    load = T.Compose([
        T.LoadImaged(["image", "label"], image_only=True),
        T.EnsureChannelFirstd(["image", "label"]),
        T.Spacingd(["image", "label"], pixdim=[spacing] * 3, mode=["bilinear", "nearest"]),
        T.ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True),
        T.DivisiblePadd(["image", "label"], k=8),
    ])
    out = []
    for i in range(1, 5):
        d = load({"image": str(DATA / f"Case{i}.nii.gz"), "label": str(DATA / f"Case{i}_label.nii.gz")})
        out.append((d["image"].as_tensor()[None].float(), d["label"].as_tensor()[None].long(), f"Case{i}"))
    return out


def build(method: str):
    from monai.networks.nets import UNet

    from ldmonai.ldseg import DeterministicSegmenter, LDSeg

    if method.startswith("unet"):
        return DeterministicSegmenter(UNet(3, 1, 3, channels=[16, 32, 64], strides=[2, 2], num_res_units=1), 3)
    return LDSeg(3, 1, 3, **TINY, **VARIANTS[method])


def hd95_mm(pred, label, spacing: float) -> list[float]:
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    p, y = one_hot(pred, 3), one_hot(label, 3)
    d = compute_hausdorff_distance(p, y, include_background=False, percentile=95, spacing=spacing)
    return [float(v) for v in d[0]]


def run_one(job: dict) -> dict:
    import torch

    from ldmonai.ldseg import SegmentationLoss
    from ldmonai.ldseg.uncertainty import uncertainty_maps

    torch.set_num_threads(1)
    cases = load_cases(job["spacing"])
    test = cases[job["fold"]]
    train = [c for i, c in enumerate(cases) if i != job["fold"]]
    x_all, y_all = torch.cat([c[0] for c in train]), torch.cat([c[1] for c in train])
    torch.manual_seed(job["seed"])
    model = build(job["method"])
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"])
    loss_fn = SegmentationLoss()
    budget = job["budget_s"] * (3 if job["method"] == "ldseg_long" else 1)
    t0, it, log = time.process_time(), 0, []
    while True:
        spent = time.process_time() - t0
        if spent >= budget:
            break
        model.train()
        idx = torch.randint(0, len(x_all), (2,))
        x, y = x_all[idx], y_all[idx]
        if torch.rand(1) < 0.5:
            x, y = x.flip(2), y.flip(2)
        terms = loss_fn(model(x, y), y)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        if hasattr(model, "update_ema"):
            model.update_ema()
        if it % 20 == 0:
            log.append({k: round(float(v), 4) for k, v in terms.items()})
        it += 1
    train_cpu = time.process_time() - t0
    model.eval()
    image, label = test[0], test[1]
    result = {**job, "iterations": it, "train_cpu_s": round(train_cpu, 1), "loss_first": log[0], "loss_last": log[-1], "test": test[2]}
    for sigma in SIGMAS:
        noisy = image + sigma * torch.randn(image.shape, generator=torch.Generator().manual_seed(100 + job["fold"]))
        t1 = time.process_time()
        with torch.no_grad():
            probs = model.sample(noisy, job["samples"], generator=torch.Generator().manual_seed(0))
        infer = time.process_time() - t1
        maps = uncertainty_maps(probs)
        pred = maps["seg"]
        dice = [float(2 * ((pred == c) & (label == c)).sum() / ((pred == c).sum() + (label == c).sum())) for c in (1, 2)]
        wrong = (pred != label).flatten().float()
        auroc = float("nan")
        if 0 < wrong.sum() < wrong.numel():
            from monai.metrics import compute_roc_auc

            auroc = float(compute_roc_auc(maps["entropy"].flatten(), wrong))
        result[f"sigma={sigma}"] = {"dice": dice, "hd95_mm": hd95_mm(pred, label, job["spacing"]), "auroc_entropy": auroc,
                                   "infer_cpu_s": round(infer, 2)}
    return result


def report(path: Path) -> str:
    import numpy as np

    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    lines = ["| method | runs | iterations | train CPU s | Dice 1 | Dice 2 | HD95 1 (mm) | HD95 2 (mm) "
             "| mean Dice σ=0.05 | σ=0.1 | σ=0.2 | drop at σ=0.2 | AUROC entropy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(values, fmt="{:.3f}"):
        a = np.asarray(values, dtype=float)
        return f"{fmt.format(np.nanmean(a))} ± {fmt.format(np.nanstd(a))}"

    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        # per seed, the mean over folds; mean ± sd across seeds
        seeds = sorted({r["seed"] for r in rs})

        def per_seed(fn):
            return [np.mean([fn(r) for r in rs if r["seed"] == s]) for s in seeds]

        mean_dice = {s: per_seed(lambda r, s=s: np.mean(r[f"sigma={s}"]["dice"])) for s in SIGMAS}
        drop = [a - b for a, b in zip(mean_dice[0.0], mean_dice[0.2])]
        lines.append(" | ".join([
            f"| {m}", f"{len(seeds)} seeds x {len({r['fold'] for r in rs})} folds", ms(per_seed(lambda r: r["iterations"]), "{:.0f}"),
            ms(per_seed(lambda r: r["train_cpu_s"]), "{:.0f}"),
            ms(per_seed(lambda r: r["sigma=0.0"]["dice"][0])), ms(per_seed(lambda r: r["sigma=0.0"]["dice"][1])),
            ms(per_seed(lambda r: r["sigma=0.0"]["hd95_mm"][0]), "{:.1f}"), ms(per_seed(lambda r: r["sigma=0.0"]["hd95_mm"][1]), "{:.1f}"),
            ms(mean_dice[0.05]), ms(mean_dice[0.1]), ms(mean_dice[0.2]), ms(drop),
            ms(per_seed(lambda r: r["sigma=0.0"]["auroc_entropy"])),
        ]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["unet", *VARIANTS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--ablation-seeds", nargs="+", type=int, default=[0],
                        help="seeds for the ablation rows (ldseg_*); the unet and ldseg rows use --seeds")
    parser.add_argument("--budget-s", type=float, default=90.0, help="training CPU seconds per run")
    parser.add_argument("--spacing", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--samples", type=int, default=4, help="LDSeg samples per test volume")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ldseg_knee.jsonl")
    parser.add_argument("--report", type=Path, help="print the tables of a results file and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if not DATA.is_dir():
        print(f"ldseg_knee: {DATA} not found; this benchmark needs the shared knee cases", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        done = {(r["method"], r["seed"], r["fold"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
    jobs = []
    for method in args.methods:
        for seed in (args.seeds if method in ("unet", "ldseg") else args.ablation_seeds):
            for fold in args.folds:
                if (method, seed, fold) not in done:
                    jobs.append({"method": method, "seed": seed, "fold": fold, "budget_s": args.budget_s, "spacing": args.spacing,
                                 "lr": args.lr, "samples": 1 if method.startswith("unet") else args.samples})
    print(f"{len(jobs)} runs to do ({len(done)} already in {args.out})", flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(args.workers) as pool:
        for result in pool.map(run_one, jobs):
            with args.out.open("a") as f:
                f.write(json.dumps(result) + "\n")
            s0 = result["sigma=0.0"]
            print(f"{result['method']} seed {result['seed']} fold {result['fold']}: {result['iterations']} it, "
                  f"Dice {s0['dice'][0]:.3f}/{s0['dice'][1]:.3f}, σ=0.2 "
                  f"{result['sigma=0.2']['dice'][0]:.3f}/{result['sigma=0.2']['dice'][1]:.3f}", flush=True)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
