"""What LD's bundle runs call: wiring of the model, the drift, the data and the outputs.

Nothing here does maths of its own: sampling is :meth:`LatentDiffusion.sample` (the drift in
its scheduler wrapper), the δ search is :func:`search_delta`, the metrics are
:mod:`ldmonai.metrics.generative`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ldmonai.errors import LdmonaiError, first_line
from ldmonai.ld.delta_search import search_delta
from ldmonai.ld.finetune import prepare_scheme
from ldmonai.ld.model import LatentDiffusion
from ldmonai.ld.prompts import PromptBuilder

__all__ = ["datalist_entries", "datalist_slice_affine", "default_vocabulary", "delta_grid_image", "edit_slices", "evaluate_generation",
           "finetune_model", "generate_slices", "with_class_images", "instruct_pix2pix_model", "latent_scale", "load_model", "load_slices",
           "run_delta_search", "training_delta"]


def default_vocabulary() -> list[str]:
    """Every word of the prompt templates (all fields, all age styles) and of the natural captions."""
    from ldmonai.data.slice_sets import NATURAL_SUBJECTS
    from ldmonai.ld.text_encoder import WordTokenizer

    words = set(PromptBuilder(fields=("age", "sex", "diagnosis"), templates="diverse").vocabulary())
    words.update(PromptBuilder(modality="chest x-ray", subject="chest", templates="diverse").vocabulary())
    for subject in NATURAL_SUBJECTS.values():
        words.update(WordTokenizer.split(f"a photo of {subject}"))
    return sorted(words)


def datalist_entries(datalist: str | os.PathLike, split: str = "training") -> list[dict]:
    """Entries of ``split`` with an existing ``image`` and a text ``prompt`` each, or one clear error.
    A ``source`` image (InstructPix2Pix pairs) is resolved and checked like ``image``."""
    from ldmonai.data.datalist import load_datalist

    entries = load_datalist(datalist, split, keys=("image",), optional_keys=("source",))
    for i, e in enumerate(entries):
        if not isinstance(e.get("prompt"), str) or not e["prompt"].strip():
            raise LdmonaiError(f"{split}[{i}] has no text 'prompt'", datalist, 'give every slice a "prompt" string')
    return entries


def load_slices(datalist: str | os.PathLike, split: str = "validation", limit: int | None = None,
                key: str = "image") -> tuple[torch.Tensor, list[str]]:
    """``(N, 1, H, W)`` slices in [0, 1] of ``key`` and their prompts from a datalist with ``image`` and ``prompt``."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

    entries = datalist_entries(datalist, split)[:limit]
    missing = [i for i, e in enumerate(entries) if not e.get(key)]
    if missing:
        raise LdmonaiError(f"{split}[{missing[0]}] has no {key!r}", datalist, f'give every entry a "{key}" image')
    load = Compose([LoadImaged(key, image_only=True), EnsureChannelFirstd(key), ScaleIntensityd(key)])
    items = [load(e) for e in entries]
    return torch.stack([torch.as_tensor(i[key]).float() for i in items]), [i["prompt"] for i in items]


@torch.no_grad()
def latent_scale(model: LatentDiffusion, images: torch.Tensor) -> float:
    """1 / std of the latents of ``images``: the scale factor that gives the denoiser unit-variance latents.

    ``encode`` already multiplies by the current factor, so the ratio is independent of it.
    """
    return float(model.scale_factor / model.encode(images).std().clamp_min(1e-6))


def load_model(model: LatentDiffusion, path: str | os.PathLike | None, scheme: str | None = None,
               token: str = "<sks>", device: str | torch.device = "cpu") -> LatentDiffusion:
    """Weights from ``path`` into ``model``, after re-creating what ``scheme`` added (tokens, LoRA adapters)."""
    from ldmonai.engines.checkpoint import load_state_dict

    if scheme:
        prepare_scheme(model, scheme, token)
    if path:
        state = load_state_dict(path, "LD weights")
        from ldmonai.ld.instruct_pix2pix import from_text_to_image, is_instruct_pix2pix_state

        if is_instruct_pix2pix_state(model, state):  # InstructPix2Pix weights: widen the model to take them
            model = from_text_to_image(model)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise LdmonaiError(f"the weights do not fit this model ({first_line(err)})", path,
                               "use the configs (sizes, scheme) the weights were trained with") from None
    return model.to(device).eval()


def finetune_model(model: LatentDiffusion, pretrained_path: str | os.PathLike | None, scheme: str | None,
                   token: str = "<sks>", initializer: str | None = None, device: str | torch.device = "cpu") -> LatentDiffusion:
    """The model to train: pretrained weights loaded, then ``scheme`` applied (what trains is what
    has ``requires_grad``). Done before any DDP wrapper is built around it."""
    if pretrained_path:
        from ldmonai.engines.checkpoint import require_checkpoint

        load_model(model, require_checkpoint(pretrained_path))
    if scheme:
        prepare_scheme(model, scheme, token, initializer)
    return model.to(device)


def instruct_pix2pix_model(model: LatentDiffusion, pretrained_path: str | os.PathLike | None,
                           device: str | torch.device = "cpu", condition_dropout: float = 0.05):
    """The InstructPix2Pix model to train: the text-to-image ``model`` (MONAI, or Stable Diffusion
    as it loaded) with the text-to-image weights of ``pretrained_path``, widened to take the
    source (:func:`~ldmonai.ld.instruct_pix2pix.from_text_to_image`); the UNet open (the paper
    fine-tunes the whole UNet), the autoencoder and the text encoder frozen."""
    from ldmonai.ld.instruct_pix2pix import from_text_to_image

    if pretrained_path:
        from ldmonai.engines.checkpoint import require_checkpoint

        load_model(model, require_checkpoint(pretrained_path))
    model = from_text_to_image(model, condition_dropout)
    model.requires_grad_(False)
    model.unet.requires_grad_(True)
    return model.to(device)


def with_class_images(entries: list[dict], model: LatentDiffusion, out_dir: str | os.PathLike, instance_prompt: str,
                      class_prompt: str, num_class_images: int, latent_size: Sequence[int], num_inference_steps: int = 50,
                      seed: int = 0) -> list[dict]:
    """DreamBooth's training set: the instance slices under ``instance_prompt`` (with the
    identifier, e.g. "a brain mri of a <sks> brain") plus ``num_class_images`` slices that the
    model generates for ``class_prompt`` before fine-tuning, flagged ``prior``.

    Class images already in ``out_dir`` (a resumed run) are reused, not regenerated.
    """
    from ldmonai.io.preview import save_unit_png

    if not entries:
        raise LdmonaiError("no instance slices to fine-tune on", None, "give the datalist a non-empty 'training' split")
    out = Path(out_dir)
    paths = [out / f"class_{i:04d}.png" for i in range(num_class_images)]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        was_training = model.training
        model.eval()
        images = _slices(model, [class_prompt] * len(todo), latent_size, 0.0, num_inference_steps, seed).numpy()
        model.train(was_training)
        for i, img in zip(todo, images):
            save_unit_png(paths[i], img[0])
    instance = [{**e, "prompt": instance_prompt, "prior": False} for e in entries]
    return instance + [{"image": str(p), "prompt": class_prompt, "prior": True} for p in paths]


def _as_json(delta: float | Sequence[float]) -> float | list[float]:
    return float(delta) if isinstance(delta, (int, float)) else [float(d) for d in delta]


def _slices(model: LatentDiffusion, prompts: Sequence[str], latent_size: Sequence[int], delta: float | Sequence[float],
            num_inference_steps: int, seed: int, guidance_scale: float = 1.0) -> torch.Tensor:
    """``(N, C, H, W)`` samples in [0, 1] on the CPU, from noise seeded by ``seed`` (the same for every δ)."""
    return model.sample(list(prompts), latent_size, delta=delta, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed)).clamp(0, 1).cpu()


def _save_slice_nifti(path: Path, image: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write an ``(H, W)`` display-oriented slice (anterior up) as NIfTI, transposed to (x, y), with
    ``affine`` (identity when the training data carried no geometry)."""
    import nibabel as nib

    from ldmonai.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(image.T.astype(np.float32), np.eye(4) if affine is None else np.asarray(affine)), str(tmp))


def datalist_slice_affine(datalist: str | os.PathLike) -> np.ndarray | None:
    """The ``slice_affine`` a slice datalist carries (``ldmonai data brain-slices`` writes the MNI152
    template's), or None, with a one-line note, when there is no datalist or no geometry in it."""
    path = Path(datalist)
    affine = json.loads(path.read_text()).get("slice_affine") if path.is_file() else None
    if affine is None:
        print(f"ldmonai: note: no 'slice_affine' in {path}; generated NIfTI slices get an identity affine "
              "(1 mm pixels, no position)", file=sys.stderr, flush=True)
        return None
    return np.asarray(affine, dtype=np.float64)


def _cycle(prompts: Sequence[str], n: int) -> list[str]:
    return [prompts[k % len(prompts)] for k in range(n)]


def generate_slices(model: LatentDiffusion, prompts: Sequence[str], out_dir: str | os.PathLike, latent_size: Sequence[int],
                    num_per_prompt: int = 4, delta: float | Sequence[float] = 0.0, num_inference_steps: int = 50,
                    guidance_scale: float = 1.0, seed: int = 0, affine: np.ndarray | None = None) -> list[Path]:
    """Sample ``num_per_prompt`` slices per prompt; write ``<i>_<j>.png`` and ``.nii.gz`` (with ``affine``,
    the training slices' geometry, see :func:`datalist_slice_affine`) and ``prompts.json``."""
    from ldmonai.io.atomic import atomic_write_json
    from ldmonai.io.preview import grey, save_png

    if not prompts:
        raise LdmonaiError("no prompts to generate from", None, "set 'prompts' to a list of texts")
    out = Path(out_dir)
    written = []
    for i, prompt in enumerate(prompts):
        images = _slices(model, [prompt] * num_per_prompt, latent_size, delta, num_inference_steps, seed + i, guidance_scale)
        for j, img in enumerate(images.numpy()):
            stem = out / f"{i:03d}_{j:02d}"
            save_png(stem.with_suffix(".png"), grey(img[0], percentiles=(0, 100)))
            _save_slice_nifti(stem.with_suffix(".nii.gz"), img[0], affine)
            written.append(stem.with_suffix(".png"))
    atomic_write_json(out / "prompts.json", {"prompts": list(prompts), "delta": _as_json(delta),
                                             "steps": num_inference_steps, "guidance_scale": guidance_scale, "seed": seed})
    return written


def delta_grid_image(model: LatentDiffusion, prompt: str, deltas: Sequence[float], latent_size: Sequence[int],
                     path: str | os.PathLike, num_samples: int = 4, num_inference_steps: int = 50, seed: int = 0) -> Path:
    """One PNG, a row per δ, a column per sample, all from the same noise (the paper's Fig. 2 layout)."""
    from ldmonai.io.preview import save_png, slice_row

    rows = []
    for d in deltas:
        imgs = _slices(model, [prompt] * num_samples, latent_size, d, num_inference_steps, seed).numpy()
        rows.append(slice_row(imgs))
    save_png(path, np.concatenate(rows, axis=0))
    return Path(path)


def run_delta_search(model: LatentDiffusion, datalist: str | os.PathLike, out_dir: str | os.PathLike,
                     latent_size: Sequence[int], num_samples: int = 16, split: str = "validation", low: float = -0.2,
                     high: float = 0.2, num_grid: int = 9, num_refine: int = 4, distance: str = "pairwise",
                     num_inference_steps: int = 50, seed: int = 0) -> dict:
    """δ search against the real slices of ``split``; writes the table, the plot and the δ grid image."""
    from ldmonai.io.atomic import atomic_write_json

    real, prompts = load_slices(datalist, split)  # an empty split is refused there
    prompt_list = _cycle(prompts, num_samples)

    def generate(delta: float) -> torch.Tensor:
        return _slices(model, prompt_list, latent_size, delta, num_inference_steps, seed)

    result = search_delta(generate, real, low, high, num_grid, num_refine, distance)
    table, plot = result.write(out_dir)
    grid = delta_grid_image(model, prompt_list[0], sorted({low, 0.0, result.best, high}), latent_size,
                            Path(out_dir) / "delta_grid.png", num_inference_steps=num_inference_steps, seed=seed)
    summary = {"best_delta": result.best, "at_edge": result.at_edge, "table": str(table), "plot": str(plot), "grid": str(grid),
               "num_samples": num_samples, "num_real": int(real.shape[0]), "distance": distance}
    atomic_write_json(Path(out_dir) / "delta_search.json", summary)
    return summary


def training_delta(model: LatentDiffusion, delta: float | Sequence[float] | str, use_latent_drift: bool = True,
                   search: dict | None = None) -> float | list[float]:
    """The δ a fine-tuning trains with, recorded in the model's ``latent_drift`` buffer (and so in
    every checkpoint of the run), where inference and evaluation read it.

    ``delta="search"`` is the paper's workflow: search δ on the *pretrained* model (``model``
    before any step) against the target slices, then fine-tune with the δ found.
    ``search`` holds :func:`run_delta_search`'s arguments (``datalist``, ``out_dir``,
    ``latent_size``, ...). A search already written to ``out_dir`` is reused, so a resumed run
    does not search again. Under DDP, rank 0 searches and broadcasts the result.
    """
    if not use_latent_drift:
        return model.record_delta(0.0)
    if delta != "search":
        if isinstance(delta, str):
            raise LdmonaiError(f"delta={delta!r} is neither a number nor 'search'", None,
                               "give a float, one float per latent channel, or 'search'")
        return model.record_delta(delta)
    if not search:
        raise LdmonaiError("delta='search' needs the search settings", None, "pass the delta_search dict of train.json")
    from ldmonai.ld.instruct_pix2pix import InstructPix2Pix

    if isinstance(model, InstructPix2Pix):
        raise LdmonaiError("delta='search' samples from text, which an InstructPix2Pix model cannot do", None,
                           "search δ with the text-to-image model (delta_search.json) and pass the value as --delta")
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    found = torch.zeros(1, device=model.latent_drift.device)
    if not distributed or dist.get_rank() == 0:
        summary_path = Path(search["out_dir"]) / "delta_search.json"
        if summary_path.is_file():
            best = json.loads(summary_path.read_text())["best_delta"]
            print(f"ldmonai: δ search already in {summary_path}: δ = {best:+.4g} (delete the file to search again)", flush=True)
        else:
            was_training = model.training
            model.eval()
            best = run_delta_search(model, **search)["best_delta"]
            model.train(was_training)
            print(f"ldmonai: δ searched on the pretrained model: δ = {best:+.4g}; fine-tuning with it", flush=True)
        found.fill_(best)
    if distributed:
        dist.broadcast(found, src=0)
    return model.record_delta(float(found))


def _class_values(entries: list[dict], class_key: str, datalist, split: str) -> list:
    # not a falsy test as for image paths: 0 is a valid class value
    missing = [i for i, e in enumerate(entries) if e.get(class_key) in (None, "")]
    if missing:
        raise LdmonaiError(f"{split}[{missing[0]}] has no {class_key!r}", datalist,
                           f'give every slice a "{class_key}" value, or set class_key to null')
    return [e[class_key] for e in entries]


def _train_on_synthetic(model, datalist, split, real, class_key, latent_size, delta, num_samples, num_inference_steps,
                        seed, epochs) -> dict:
    """Classifier AUC: trained on slices generated per class of the training prompts, tested on
    ``real``, the slices of ``split`` (as :func:`load_slices` loaded them, in datalist order)."""
    from ldmonai.metrics.classifier_auc import classifier_auc

    train = datalist_entries(datalist, "training")
    train_classes = _class_values(train, class_key, datalist, "training")
    test_classes = _class_values(datalist_entries(datalist, split), class_key, datalist, split)
    images, labels = [], []
    for k, value in enumerate(sorted(set(train_classes), key=str)):
        class_prompts = [e["prompt"] for e, c in zip(train, train_classes) if c == value]
        images.append(_slices(model, _cycle(class_prompts, num_samples), latent_size, delta, num_inference_steps, seed + 1 + k))
        labels += [value] * num_samples
    return classifier_auc(torch.cat(images), labels, real, test_classes, epochs=epochs, seed=seed)


def evaluate_generation(model: LatentDiffusion, datalist: str | os.PathLike, out_dir: str | os.PathLike,
                        latent_size: Sequence[int], delta: float | Sequence[float] = 0.0, split: str = "test",
                        num_samples: int = 64, num_inference_steps: int = 50, seed: int = 0,
                        feature_weights: str | os.PathLike | None = None, class_key: str | None = None,
                        classifier_epochs: int = 30) -> dict:
    """FID and KID between ``num_samples`` generated slices and the real slices of ``split``.

    With ``class_key`` (for example ``"diagnosis"``), also the AUC of a ResNet-18 trained on
    slices generated from the training split's prompts of each class and tested on the real
    slices of ``split`` (:func:`~ldmonai.metrics.classifier_auc.classifier_auc`).
    """
    from ldmonai.io.atomic import atomic_write_json
    from ldmonai.metrics.generative import SliceFeatures, generative_metrics

    real, prompts = load_slices(datalist, split)
    fake = _slices(model, _cycle(prompts, num_samples), latent_size, delta, num_inference_steps, seed)
    metrics = generative_metrics(fake, real, SliceFeatures(feature_weights, size=max(32, real.shape[-1])))
    if class_key:
        metrics["classifier"] = _train_on_synthetic(model, datalist, split, real, class_key, latent_size, delta,
                                                    num_samples, num_inference_steps, seed, classifier_epochs)
    metrics["delta"] = _as_json(delta)
    atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    return metrics


def edit_slices(model: LatentDiffusion, datalist: str | os.PathLike, out_dir: str | os.PathLike,
                method: str = "auto", split: str = "validation", limit: int | None = 8,
                delta: float | Sequence[float] = 0.0, num_inference_steps: int = 50, seed: int = 0,
                source_sentences: Sequence[str] = (), target_sentences: Sequence[str] = (), strength: float = 1.0,
                cross_attention_guidance: float = 0.1, image_guidance: float = 1.5, text_guidance: float = 7.5,
                lpips_model: str | os.PathLike | None = None) -> dict:
    """Counterfactuals of the slices of ``split``, with PNG pairs, NIfTI and source-vs-edit metrics.

    ``method`` (``auto``: InstructPix2Pix for an InstructPix2Pix model, Pix2Pix-Zero otherwise):

    - ``pix2pix_zero``: each ``image`` is inverted under its ``prompt`` and resampled with the
      text direction from ``source_sentences`` to ``target_sentences``;
    - ``instruct_pix2pix``: each ``source`` is edited by its ``prompt`` (an instruction) with
      an :class:`~ldmonai.ld.instruct_pix2pix.InstructPix2Pix` model.

    Writes ``<i>.png`` (source | counterfactual), ``<i>.nii.gz`` and ``edit_metrics.csv``
    (SSIM and PSNR between source and counterfactual, MONAI metrics; LPIPS with a local
    ``lpips_model``, :mod:`ldmonai.metrics.perceptual`) and returns the means.
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    from ldmonai.io.atomic import atomic_write_csv, atomic_write_json
    from ldmonai.io.preview import grey, panel, save_png
    from ldmonai.ld.editing import Pix2PixZero, edit_direction
    from ldmonai.ld.instruct_pix2pix import InstructPix2Pix

    lpips_net = None
    if lpips_model:
        from ldmonai.metrics.perceptual import load_lpips

        lpips_net = load_lpips(lpips_model)  # before the slow part: a bad path fails at once
    methods = ("pix2pix_zero", "instruct_pix2pix")
    if method == "auto":
        method = methods[isinstance(model, InstructPix2Pix)]
    if method not in methods:
        raise LdmonaiError(f"unknown editing method {method!r}", None, f"use auto or one of {', '.join(methods)}")
    if method == "instruct_pix2pix":
        if not isinstance(model, InstructPix2Pix):
            raise LdmonaiError("instruct_pix2pix editing needs an InstructPix2Pix model", None,
                               "merge configs/instruct_pix2pix.json and load the weights it trained")
        sources, prompts = load_slices(datalist, split, limit, key="source")
        edited = model.edit(sources, prompts, delta, num_inference_steps, image_guidance, text_guidance,
                            generator=torch.Generator().manual_seed(seed))
    else:
        sources, prompts = load_slices(datalist, split, limit)
        direction = edit_direction(model.text_encoder, source_sentences, target_sentences)
        editor = Pix2PixZero(model, num_inference_steps, delta, cross_attention_guidance)
        edited = editor.edit(editor.invert(sources, prompts), prompts, direction, strength)
    edited = edited.clamp(0, 1).cpu()
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0)(edited, sources).flatten()
    psnr = PSNRMetric(max_val=1.0)(edited, sources).flatten()
    lpips = None
    if lpips_net is not None:
        from ldmonai.metrics.perceptual import lpips_distance

        lpips = lpips_distance(lpips_net, edited, sources)
    out = Path(out_dir)
    rows = []
    for i in range(len(sources)):
        save_png(out / f"{i:03d}.png", panel([grey(sources[i, 0].numpy(), (0, 100)), grey(edited[i, 0].numpy(), (0, 100))]))
        _save_slice_nifti(out / f"{i:03d}.nii.gz", edited[i, 0].numpy())
        rows.append({"case": i, "prompt": prompts[i], "ssim": float(ssim[i]), "psnr": float(psnr[i]),
                     "lpips": "" if lpips is None else float(lpips[i])})
    atomic_write_csv(out / "edit_metrics.csv", rows)
    summary = {"method": method, "cases": len(rows), "delta": _as_json(delta), "ssim": float(ssim.mean()),
               "psnr": float(psnr.mean()), "lpips": None if lpips is None else float(lpips.mean())}
    if lpips is None:
        summary["lpips_note"] = "not computed: set lpips_model to a local TorchScript LPIPS file"
    atomic_write_json(out / "edit_summary.json", summary)
    return summary
