"""GDM (one step) against supervised regression and rectified flow at 10 and 50 steps.

One run, on the same MR/CT head phantoms (``ldmonai.data.make_mr_ct_phantoms``, a
documented phantom, not patient data):

1. makes the phantoms and splits them (SynthRAD layout, fixed seed);
2. trains the three models with the bundle itself (``python -m monai.bundle run`` on
   ``bundles/gdm/configs/train.json``, plus ``regression.json`` or ``rflow.json``), with
   the same number of iterations, batch size and patch size;
3. for each method, in its own process so that its peak memory is its own, runs
   whole-volume sliding-window inference on every test volume and reports the SynthRAD2025
   metrics (masked MAE in HU, PSNR, masked MS-SSIM), the time per volume (after one
   warm-up volume) and the peak memory (CUDA: ``max_memory_allocated`` above what the
   weights hold; CPU: highest RSS above the RSS before inference, sampled every ms).
   RFlow-10 and RFlow-50 are the same trained network sampled with 10 and 50 Euler steps.

    python benchmarks/gdm.py                         # 20 cases at 48^3, 1600 iterations, CPU
    python benchmarks/gdm.py --iterations 6400 --size 64 --device cuda
    python benchmarks/gdm.py --work /tmp/gdm --reuse # evaluate again without training
    python benchmarks/gdm.py --ablation --seeds 0 1 2 --json ablation.json

``--ablation`` answers whether the drift and the gradient coordination help. It trains, with each
seed and the same budget: regression (L1 only), GDM, GDM without gradient coordination, and GDM
with the kernel scale ldmonai had before 2026-12-03 (``distance_unit: sqrt_channels``). Each is
scored on the test volumes with the official SynthRAD metrics (MAE, PSNR, MS-SSIM) and two
realism measures that no loss here optimises directly:

- feature MMD: an RBF-kernel MMD^2 (bandwidth: the median distance) between the generated and the
  real test CT's feature tokens, from a frozen encoder of the same family as the feature bank
  (``RandomMultiScaleEncoder``) with another seed than the one the drift loss sees, at its two
  deeper stages, every location a token;
- gradient ratio: the mean gradient magnitude inside the mask over that of the real CT (1 = as
  sharp as the real CT; regression to the mean blurs, below 1).

Needs the ``[samples]`` extra (scikit-image for the phantoms) and psutil.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.measure import PeakRSS, add_worker_arguments, hardware, parse_worker_arguments, run_bundle  # noqa: E402

CONFIGS = ROOT / "bundles" / "gdm" / "configs"
ITERATIONS_PER_EPOCH = 16
VARIANTS = {"gdm": [], "regression": ["regression.json"], "rflow": ["rflow.json"]}
METHODS = {"gdm": ("gdm", 1), "regression": ("regression", 1), "rflow10": ("rflow", 10), "rflow50": ("rflow", 50)}
# --ablation: the configs merged after train.json, and the overrides
ABLATION = {
    "regression": (["regression.json"], {}),
    "gdm": ([], {}),
    "gdm_no_coordination": ([], {"coordinate": False}),
    "gdm_old_kernel": ([], {"drift_loss#distance_unit": "sqrt_channels"}),
}
REALISM_ENCODER_SEED = 7  # not the feature bank's seed (0): a held-out view of the same family


def config_files(variant: str) -> list[str]:
    return [str(CONFIGS / "train.json")] + [str(CONFIGS / f) for f in VARIANTS[variant]]


def overrides(work: Path, variant: str, device: str) -> dict[str, str]:
    return {
        "bundle_root": str(work),
        "dataset_dir": str(work / "data" / "Task1"),
        "ckpt_dir": str(work / "models" / variant),
        "output_dir": str(work / "runs" / variant),
        "device": f"$torch.device('{device}')",
    }


def train(work: Path, variant: str, iterations: int, device: str, threads: int) -> dict:
    epochs = max(1, iterations // ITERATIONS_PER_EPOCH)
    seconds = run_bundle(config_files(variant), {**overrides(work, variant, device), "epochs": epochs, "val_interval": epochs,
                                                 "iterations_per_epoch": ITERATIONS_PER_EPOCH},
                         work / f"train_{variant}.log", env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return {"seconds": seconds, "iterations": epochs * ITERATIONS_PER_EPOCH}


def worker(args) -> None:
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from ldmonai.data import paired_datalist
    from ldmonai.gdm import unit_to_hu
    from ldmonai.metrics import image_metrics

    torch.set_num_threads(args.threads)
    variant, steps = METHODS[args.method]
    work = Path(args.work)
    parser = ConfigParser()
    parser.read_config(config_files(variant))
    parser.update(overrides(work, variant, args.device))
    if variant == "rflow":
        parser["num_inference_steps"] = steps
    device = torch.device(args.device)
    net = parser.get_parsed_content("network_def").to(device).eval()
    state = torch.load(work / "models" / variant / "model.pt", map_location=device, weights_only=True)
    net.load_state_dict(state)
    inferer = parser.get_parsed_content("inferer")
    load = Compose(parser.get_parsed_content("load"))
    cases = [load(e) for e in paired_datalist(work / "data" / "Task1", "test", args.val_fraction, args.test_fraction)]

    def infer(image):
        torch.manual_seed(0)
        out = inferer(image[None].to(device), net)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    with torch.no_grad():
        infer(cases[0]["image"].as_tensor())  # warm-up: allocator and kernel setup
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times, metrics, peaks = [], [], []
        for c in cases:
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                pred = infer(c["image"].as_tensor())
                times.append(time.perf_counter() - t0)
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else rss.mb)
            gt = unit_to_hu(c["label"][0]).numpy()
            sct = np.clip(unit_to_hu(pred[0, 0].cpu()).numpy(), -1024, 3071)
            metrics.append(image_metrics(gt, sct, np.asarray(c["mask"][0])))
    print(json.dumps({
        "method": args.method, "steps": steps, "cases": len(cases), "volume": list(cases[0]["image"].shape[1:]),
        "seconds_per_volume": float(np.mean(times)), "peak_mb": float(max(peaks)),
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        **{k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]},
    }))


def realism(pred_hu, gt_hu, mask) -> dict:
    """Feature MMD^2 and the gradient ratio of one generated volume against its real CT (HU arrays)."""
    import numpy as np
    import torch

    from ldmonai.gdm import RandomMultiScaleEncoder, hu_to_unit

    encoder = RandomMultiScaleEncoder(3, 1, (16, 32, 64), seed=REALISM_ENCODER_SEED).eval()
    with torch.no_grad():
        feats = [encoder(hu_to_unit(torch.as_tensor(v, dtype=torch.float32).clamp(-1024, 3071))[None, None])
                 for v in (pred_hu, gt_hu)]
    mmd = []
    for level in (1, 2):
        x, y = (f[level][0].flatten(1).T for f in feats)  # (tokens, C)
        z = torch.cat([x, y])
        d2 = torch.cdist(z, z).pow(2)
        bandwidth = d2[d2 > 0].median().clamp_min(1e-12)
        k = torch.exp(-d2 / bandwidth)
        n = x.shape[0]
        mmd.append(float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()))
    inside = np.asarray(mask) > 0

    def grad(v):
        return np.sqrt(sum(g ** 2 for g in np.gradient(np.asarray(v, dtype=np.float64))))[inside].mean()

    return {"feature_mmd": float(np.mean(mmd)), "gradient_ratio": float(grad(pred_hu) / grad(gt_hu))}


def ablation_worker(args) -> None:
    """Score one trained ablation model (``--method ablation:<variant>:<seed>``) on the test volumes."""
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from ldmonai.data import paired_datalist
    from ldmonai.gdm import unit_to_hu
    from ldmonai.metrics import image_metrics

    torch.set_num_threads(args.threads)
    _, variant, seed = args.method.split(":")
    work = Path(args.work)
    files, extra = ABLATION[variant]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")] + [str(CONFIGS / f) for f in files])
    parser.update({**overrides(work, variant, args.device), **extra})
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(work / "models" / f"{variant}_s{seed}" / "model.pt", map_location="cpu", weights_only=True))
    inferer = parser.get_parsed_content("inferer")
    load = Compose(parser.get_parsed_content("load"))
    rows = []
    with torch.no_grad():
        for e in paired_datalist(work / "data" / "Task1", "test", args.val_fraction, args.test_fraction):
            c = load(e)
            pred = inferer(c["image"].as_tensor()[None], net)
            gt = unit_to_hu(c["label"][0]).numpy()
            sct = np.clip(unit_to_hu(pred[0, 0]).numpy(), -1024, 3071)
            mask = np.asarray(c["mask"][0])
            rows.append({**image_metrics(gt, sct, mask, names=("mae", "psnr", "ms_ssim")), **realism(sct, gt, mask)})
    print(json.dumps({k: float(np.mean([r[k] for r in rows])) for k in rows[0]}))


def run_ablation(args, work: Path) -> None:
    import statistics

    results: dict[str, list[dict]] = {}
    for variant, (files, extra) in ABLATION.items():
        for seed in args.seeds:
            name = f"{variant}_s{seed}"
            model = work / "models" / name / "model.pt"
            seconds = None
            if not (args.reuse and model.is_file()):
                epochs = max(1, args.iterations // ITERATIONS_PER_EPOCH)
                seconds = run_bundle([str(CONFIGS / "train.json")] + [str(CONFIGS / f) for f in files],
                                     {**overrides(work, variant, args.device), "ckpt_dir": str(model.parent),
                                      "output_dir": str(work / "runs" / name), "seed": seed, "epochs": epochs,
                                      "val_interval": epochs, "iterations_per_epoch": ITERATIONS_PER_EPOCH, **extra},
                                     work / f"train_{name}.log", env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            cmd = [sys.executable, __file__, "--method", f"ablation:{variant}:{seed}", "--work", str(work), "--device", "cpu",
                   "--threads", str(args.threads), "--val-fraction", str(args.val_fraction),
                   "--test-fraction", str(args.test_fraction)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"scoring {name} failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            r["train_seconds"] = seconds
            results.setdefault(variant, []).append(r)
            print(f"{name:26s} MAE {r['mae']:7.1f} HU  PSNR {r['psnr']:6.2f} dB  MS-SSIM {r['ms_ssim']:.4f}  "
                  f"feature MMD {r['feature_mmd']:.4f}  gradient ratio {r['gradient_ratio']:.3f}"
                  + (f"  trained in {seconds:.0f} s" if seconds else ""), flush=True)

    def ms(values, digits):
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

    print(f"\nmean ± sd over seeds {args.seeds}, {args.iterations} iterations each, {hardware(args.device)}")
    print("| method | MAE HU | PSNR dB | MS-SSIM | feature MMD | gradient ratio |\n|---|---:|---:|---:|---:|---:|")
    for variant, rows in results.items():
        print(f"| {variant} | {ms([r['mae'] for r in rows], 1)} | {ms([r['psnr'] for r in rows], 2)} | "
              f"{ms([r['ms_ssim'] for r in rows], 4)} | {ms([r['feature_mmd'] for r in rows], 4)} | "
              f"{ms([r['gradient_ratio'] for r in rows], 3)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hardware": hardware(args.device), "results": results}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=20, help="phantom cases (split 60/20/20)")
    p.add_argument("--size", type=int, default=48, help="phantom size per axis")
    p.add_argument("--iterations", type=int, default=1600, help="training iterations per model (batch 2, 32^3 patches)")
    p.add_argument("--work", help="working folder (default: a new temporary folder)")
    p.add_argument("--reuse", action="store_true", help="keep phantoms and trained weights already in --work")
    p.add_argument("--ablation", action="store_true", help="regression, GDM, GDM without coordination, GDM with the old kernel")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds for --ablation")
    add_worker_arguments(p)
    p.add_argument("--val-fraction", type=float, default=0.2, help=argparse.SUPPRESS)
    p.add_argument("--test-fraction", type=float, default=0.2, help=argparse.SUPPRESS)
    args = parse_worker_arguments(p)
    if args.method:
        return ablation_worker(args) if args.method.startswith("ablation:") else worker(args)

    work = Path(args.work or tempfile.mkdtemp(prefix="ldmonai_gdm_bench_"))
    data = work / "data"
    if not (args.reuse and data.is_dir()):
        from ldmonai.data import make_mr_ct_phantoms

        make_mr_ct_phantoms(data, num_cases=args.cases, size=args.size, seed=0)
    if args.ablation:
        return run_ablation(args, work)
    training = {}
    for variant in VARIANTS:
        if args.reuse and (work / "models" / variant / "model.pt").is_file():
            continue
        training[variant] = train(work, variant, args.iterations, args.device, args.threads)
        t = training[variant]
        print(f"trained {variant:10s} {t['iterations']} iterations in {t['seconds']:7.1f} s "
              f"({t['seconds'] / t['iterations']:.3f} s/iteration incl. start-up and one validation)", flush=True)

    results = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--method", method, "--work", str(work), "--device", args.device,
               "--threads", str(args.threads), "--val-fraction", str(args.val_fraction),
               "--test-fraction", str(args.test_fraction)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"evaluating {method} failed:\n{done.stderr[-3000:]}")
        results[method] = r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{method:10s} {r['steps']:3d} NFE  MAE {r['mae']:7.1f} HU  PSNR {r['psnr']:6.2f} dB  "
              f"MS-SSIM {r['ms_ssim']:.4f}  {r['seconds_per_volume']:8.3f} s/volume  peak {r['peak_mb']:8.1f} MB  "
              f"{r['params_m']:5.2f} M params", flush=True)

    g, reg, r10, r50 = (results[m] for m in ("gdm", "regression", "rflow10", "rflow50"))
    shape = "x".join(map(str, g["volume"]))
    print(f"\n{g['cases']} test volumes of {shape} (sliding window), {args.iterations} training iterations each, "
          f"{args.device}: {hardware(args.device)}")
    print(f"time   RFlow-50 / GDM          : {r50['seconds_per_volume'] / g['seconds_per_volume']:8.1f}x  (target >= 30x)")
    print(f"time   RFlow-10 / GDM          : {r10['seconds_per_volume'] / g['seconds_per_volume']:8.1f}x")
    print(f"time   regression / GDM        : {reg['seconds_per_volume'] / g['seconds_per_volume']:8.2f}x")
    print(f"memory RFlow-50 / GDM          : {r50['peak_mb'] / max(g['peak_mb'], 1e-6):8.2f}x")
    print(f"MAE    GDM - RFlow-50          : {g['mae'] - r50['mae']:+8.1f} HU  (target <= 0)")
    print(f"MAE    GDM - regression        : {g['mae'] - reg['mae']:+8.1f} HU  (target <= 0)")
    print(f"working folder: {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hardware": hardware(args.device),
                                               "training": training, "results": results}, indent=2))


if __name__ == "__main__":
    main()
