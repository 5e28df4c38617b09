"""Sampling time and peak memory: LDSeg vs pixel-space diffusion vs a deterministic UNet.

One run, one input size, the `paper` preset sizes of bundles/ldseg/configs/paper.json.
Each method runs in a fresh process so that peak memory is its own: on CUDA the peak of
``torch.cuda.max_memory_allocated`` above what the network holds; on CPU the peak of the
bytes malloc has in use, sampled every millisecond by a watcher thread during an untimed
sampling call, above the count just before it. Weights are random: the cost of sampling does not depend
on them. Each method's multiply-adds per sample come from ``torch.utils.flop_counter``, so
that the time ratio can be read against the work ratio.

    python benchmarks/ldseg.py                      # 2D 256x256, CPU
    python benchmarks/ldseg.py --dims 3 --size 64   # 3D 64^3
    python benchmarks/ldseg.py --ddpm-steps 1000    # run all 1000 pixel-space DDPM steps

Pixel-space DDPM costs the same for every step; with ``--ddpm-measure K < 1000`` it times
K steps and scales to 1000, and says so in its output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.measure import PeakHeap, add_worker_arguments, hardware, parse_worker_arguments  # noqa: E402

PAPER = json.loads((ROOT / "bundles" / "ldseg" / "configs" / "paper.json").read_text())


def build(method: str, dims: int, steps: int):
    import torch
    from monai.networks.nets import UNet

    from ldmonai.ldseg import DeterministicSegmenter, LDSeg, PixelDiffusionSegmenter

    torch.manual_seed(0)
    if method == "ldseg":
        return LDSeg(
            dims, 1, 4, latent_channels=PAPER["latent_channels"], embed_channels=PAPER["embed_channels"],
            encoder_channels=PAPER["encoder_channels"], num_res_units=PAPER["num_res_units"],
            denoiser_channels=PAPER["denoiser_channels"], denoiser_attention=PAPER["denoiser_attention"],
            denoiser_res_blocks=PAPER["denoiser_res_blocks"], norm_num_groups=PAPER["norm_num_groups"],
            num_head_channels=PAPER["num_head_channels"], sampler="ddim", num_inference_steps=steps,
        )
    if method.startswith("pixel"):
        sampler = "ddpm" if method == "pixel_ddpm" else "ddim"
        return PixelDiffusionSegmenter(
            dims, 1, 4, channels=PAPER["pixel_channels"], attention_levels=PAPER["pixel_attention"],
            num_res_blocks=2, norm_num_groups=32, num_head_channels=32, sampler=sampler, num_inference_steps=steps,
        )
    ch = PAPER["unet_channels"]
    return DeterministicSegmenter(UNet(dims, 1, 4, ch, [2] * (len(ch) - 1), num_res_units=PAPER["unet_res_units"]), 4)


@contextmanager
def reverse_steps(net, k: int):
    """``net`` sampling with ``k`` reverse steps inside the block; the UNet has none to set."""
    saved = getattr(net, "num_inference_steps", None)
    if saved is None:
        yield net
        return
    net.num_inference_steps = k
    try:
        yield net
    finally:
        net.num_inference_steps = saved


def count_gmac(net, image, samples: int, steps: int) -> float:
    """Multiply-adds of one ``sample`` call with ``steps`` reverse steps, from 1- and 2-step calls:
    the encoders and decoder run once and every step costs the same, so two short counts give
    the long one without running it a third time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for k in (1, 2):
        with reverse_steps(net, k), torch.no_grad(), FlopCounterMode(display=False) as flops:
            net.sample(image, samples)
        counts.append(flops.get_total_flops() / 2e9)
    return counts[0] + (steps - 1) * (counts[1] - counts[0])


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = {"ldseg": 10, "pixel_ddpm": args.ddpm_measure, "pixel_ddim": 50, "unet": 1}[args.method]
    net = build(args.method, args.dims, steps).to(device).eval()
    image = torch.rand(1, 1, *([args.size] * args.dims), device=device)
    # Untimed 1-step calls of the timed network itself: the first pays for allocator and kernel
    # setup and for the denoiser's trace (made once per network and shape), the second gives
    # the peak memory (a sample holds one state whatever the step count). No timed call is
    # watched: the watcher thread's malloc queries take the allocator's lock.
    with torch.no_grad(), reverse_steps(net, 1):
        net.sample(image, args.samples)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            net.sample(image, args.samples)
            torch.cuda.synchronize()
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            with PeakHeap() as mem:
                net.sample(image, args.samples)
            peak_mb = mem.mb
    with torch.no_grad():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            net.sample(image, args.samples)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    gmac = count_gmac(net, image, args.samples, 1000 if args.method == "pixel_ddpm" else steps)
    probs_shape = [args.samples, 1, 4, *image.shape[2:]]
    seconds = min(times)
    scale = 1000 / args.ddpm_measure if args.method == "pixel_ddpm" else 1.0
    print(json.dumps({
        "method": args.method, "steps": 1000 if args.method == "pixel_ddpm" else steps,
        "measured_steps": steps, "seconds": seconds * scale, "measured_seconds": seconds,
        "extrapolated": scale != 1.0, "peak_mb": peak_mb, "gmac": gmac,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6, "out_shape": probs_shape,
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--size", type=int, default=256, help="input size per axis (multiple of 16)")
    p.add_argument("--samples", type=int, default=1, help="samples per image (same for every method)")
    p.add_argument("--ddpm-measure", type=int, default=1000, help="DDPM steps actually run (scaled to 1000)")
    p.add_argument("--repeats", type=int, default=3)
    add_worker_arguments(p)
    args = parse_worker_arguments(p)
    if args.method:
        return worker(args)

    results = {}
    for method in ("unet", "ldseg", "pixel_ddim", "pixel_ddpm"):
        # The pixel-space runs take minutes and only feed the >= 100x ratios; the 3x ratio between
        # LDSeg and the UNet is where run-to-run noise matters, so those two take the best of --repeats.
        repeats = 1 if method.startswith("pixel") else args.repeats
        cmd = [sys.executable, __file__, "--method", method, "--dims", str(args.dims), "--size", str(args.size),
               "--samples", str(args.samples), "--ddpm-measure", str(args.ddpm_measure), "--repeats", str(repeats),
               "--device", args.device, "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[method] = json.loads(out)
        r = results[method]
        note = f" (timed {r['measured_steps']} steps in {r['measured_seconds']:.2f} s, scaled)" if r["extrapolated"] else ""
        print(f"{method:11s} {r['steps']:5d} steps  {r['seconds']:9.3f} s  peak {r['peak_mb']:8.1f} MB  "
              f"{r['gmac']:10.1f} GMAC  {r['params_m']:6.1f} M params{note}", flush=True)

    ld, un = results["ldseg"], results["unet"]
    shape = "x".join([str(args.size)] * args.dims)
    print(f"\ninput 1x1x{shape}, {args.samples} sample(s), {args.device}: {hardware(args.device)}")
    print(f"pixel DDPM-1000 / LDSeg DDIM-10 : {results['pixel_ddpm']['seconds'] / ld['seconds']:8.1f}x  (target >= 100x)")
    print(f"pixel DDIM-50   / LDSeg DDIM-10 : {results['pixel_ddim']['seconds'] / ld['seconds']:8.1f}x")
    print(f"LDSeg DDIM-10   / UNet          : {ld['seconds'] / un['seconds']:8.2f}x  (target <= 3x)")
    print(f"  multiply-adds LDSeg / UNet    : {ld['gmac'] / un['gmac']:8.2f}x")
    print(f"peak memory LDSeg / UNet        : {ld['peak_mb'] / max(un['peak_mb'], 1e-6):8.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "hardware": hardware(args.device), "results": results}, indent=2))


if __name__ == "__main__":
    main()
