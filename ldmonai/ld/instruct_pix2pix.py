"""InstructPix2Pix-style counterfactuals: a latent denoiser that also sees the source image.

Brooks et al., "InstructPix2Pix: Learning to Follow Image Editing Instructions" (CVPR 2023),
as LD uses it for paired data such as longitudinal scans of one subject ("make this brain
seven years older, as a brain with mild cognitive impairment"):

- the UNet's input is widened from C_z to 2·C_z channels: [z_t, E(source)]. The extra input
  weights start at zero (:func:`from_text_to_image`), so at the start of fine-tuning the model
  is exactly the pretrained text-to-image model. It works on both backends: the input
  convolution of MONAI's ``DiffusionModelUNet`` or of a diffusers ``UNet2DConditionModel``
  (Stable Diffusion) is replaced by a wider one;
- training drops the text, the source, or both (5 % each), so that one network also knows the
  unconditional branches;
- sampling combines three predictions with an image scale s_I and a text scale s_T:

      ε = ε(z, ∅, ∅) + s_I · (ε(z, c_I, ∅) − ε(z, ∅, ∅)) + s_T · (ε(z, c_I, c_T) − ε(z, c_I, ∅))

The latent drift δ enters through the scheduler wrapper, as for text-to-image.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ldmonai.diffusion.sampling import denoise
from ldmonai.errors import LdmonaiError
from ldmonai.ld.model import LatentDiffusion

__all__ = ["InstructPix2Pix", "from_text_to_image", "input_convolution", "is_instruct_pix2pix_state"]


class InstructPix2Pix(LatentDiffusion):
    """:class:`LatentDiffusion` with a source-conditioned UNet (``in_channels == 2 * out_channels``).

    Args:
        condition_dropout: probability of dropping the text only, the source only, and both
            (each; the paper's 0.05 drops 15 % of the items in some way). It replaces
            ``text_dropout``, which is accepted so that one network definition serves both models.
        Other arguments as for :class:`LatentDiffusion`.

    Shapes: ``images`` and ``sources`` ``(B, C, H, W)``; their latents ``(B, C_z, h, w)``.
    """

    def __init__(self, autoencoder, unet, text_encoder, scale_factor: float = 1.0, num_train_timesteps: int = 1000,
                 schedule: str = "scaled_linear_beta", text_dropout: float = 0.0, condition_dropout: float = 0.05,
                 beta_start: float = 0.00085, beta_end: float = 0.012) -> None:
        super().__init__(autoencoder, unet, text_encoder, scale_factor, num_train_timesteps, schedule, text_dropout,
                         beta_start, beta_end)
        if unet.in_channels != 2 * unet.out_channels:
            raise LdmonaiError(f"the UNet takes {unet.in_channels} channels and predicts {unet.out_channels}; "
                               "InstructPix2Pix needs twice the latent channels in", None,
                               "build the UNet with in_channels = 2 * latent_channels")
        if not 0 <= condition_dropout <= 1 / 3:
            raise LdmonaiError(f"condition_dropout={condition_dropout} is outside [0, 1/3]", None,
                               "it is the probability of each of three drop cases; the paper uses 0.05")
        self.condition_dropout = condition_dropout

    def predict_noise(self, noisy, timesteps, context, sources=None):
        if sources is None:
            raise LdmonaiError("InstructPix2Pix needs a source image for every target", None,
                               "give every datalist entry a 'source' image beside its 'image'")
        if sources.shape != noisy.shape:
            raise LdmonaiError(f"source latents {tuple(sources.shape)} and target latents {tuple(noisy.shape)} differ",
                               None, "give source and target slices of the same size")
        return self.unet(torch.cat([noisy, sources], 1), timesteps=timesteps, context=context)

    def drop_conditions(self, prompts, sources, generator):
        p = self.condition_dropout
        if not self.training or p == 0 or sources is None:
            return prompts, sources
        r = torch.rand(len(prompts), generator=generator)
        drop_text = (r < p) | ((r >= 2 * p) & (r < 3 * p))
        drop_source = (r >= p) & (r < 3 * p)
        prompts = ["" if d else q for q, d in zip(prompts, drop_text.tolist())]
        keep = (~drop_source).to(sources).reshape(-1, *([1] * (sources.ndim - 1)))
        return prompts, sources * keep

    def forward(self, images, prompts, delta=0.0, sources=None, weights=None):
        if sources is None:
            raise LdmonaiError("the batch has no 'source' images", None,
                               "InstructPix2Pix trains on pairs: give every datalist entry a 'source'")
        return super().forward(images, prompts, delta, sources, weights)

    def sample(self, *args, **kwargs):
        raise LdmonaiError("InstructPix2Pix edits a source image; it does not sample from text alone", None,
                           "call edit(sources, prompts), or use the text-to-image model")

    @torch.no_grad()
    def edit(self, sources: torch.Tensor, prompts: Sequence[str], delta: float | Sequence[float] = 0.0,
             num_inference_steps: int = 50, image_guidance: float = 1.5, text_guidance: float = 7.5,
             generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """Counterfactuals ``(B, C, H, W)`` of ``sources`` following the instructions ``prompts``.

        ``image_guidance`` s_I > 1 keeps closer to the source; ``text_guidance`` s_T > 1 follows the
        instruction harder. With both at 1 this is the plain conditional sampler.
        """
        if len(prompts) != sources.shape[0]:
            raise LdmonaiError(f"{len(prompts)} instructions for {sources.shape[0]} source images", None,
                               "give one instruction per source image")
        device = self.scale_factor.device
        source = self.encode(sources.to(device))
        sched = self.sample_scheduler(delta)
        z = sched.prior(source.shape, generator=generator).to(device)
        context = self.text_encoder(list(prompts))
        empty = self.text_encoder([""] * len(prompts))
        no_source = torch.zeros_like(source)

        def model_fn(x, t):
            full, image_only, none = self.unet(
                torch.cat([torch.cat([x, source], 1), torch.cat([x, source], 1), torch.cat([x, no_source], 1)]),
                timesteps=torch.cat([t, t, t]), context=torch.cat([context, empty, empty])).chunk(3)
            return none + image_guidance * (image_only - none) + text_guidance * (full - image_only)

        return self.decode(denoise(sched, model_fn, z, num_inference_steps, progress=progress))


def input_convolution(unet: nn.Module) -> tuple[str, nn.Conv2d]:
    """The UNet's first convolution and its name under ``unet``: MONAI's ``conv_in.conv``, or
    ``model.conv_in`` of a diffusers UNet behind :class:`~ldmonai.ld.diffusers_backend.DiffusersUNet`."""
    for name in ("conv_in.conv", "model.conv_in"):
        try:
            conv = unet.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(conv, nn.Conv2d):
            return name, conv
    raise LdmonaiError(f"cannot find the input convolution of {type(unet).__name__}", None,
                       "use a MONAI DiffusionModelUNet or a diffusers UNet2DConditionModel")


def is_instruct_pix2pix_state(model: LatentDiffusion, state: dict) -> bool:
    """Whether ``state`` holds InstructPix2Pix weights for ``model``'s text-to-image architecture:
    its UNet input convolution takes twice the latent channels."""
    name, conv = input_convolution(model.unet)
    weight = state.get(f"unet.{name}.weight")
    return weight is not None and weight.ndim == 4 and weight.shape[1] == 2 * conv.in_channels


@torch.no_grad()
def from_text_to_image(model: LatentDiffusion, condition_dropout: float = 0.05) -> InstructPix2Pix:
    """The InstructPix2Pix model that starts as ``model``: the same autoencoder, text encoder,
    scheduler and recorded δ, and its UNet, whose input convolution is widened to [z_t, E(source)]
    with zero weights on the source channels (the paper's initialisation)."""
    if isinstance(model, InstructPix2Pix):
        return model
    name, conv = input_convolution(model.unet)
    c = conv.in_channels
    wide = nn.Conv2d(2 * c, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode).to(conv.weight)
    wide.weight.zero_()
    wide.weight[:, :c] = conv.weight
    if conv.bias is not None:
        wide.bias.copy_(conv.bias)
    parent, _, leaf = name.rpartition(".")
    setattr(model.unet.get_submodule(parent), leaf, wide)
    if hasattr(model.unet, "model"):  # diffusers: the config says what the UNet takes
        model.unet.model.register_to_config(in_channels=2 * c)
    else:
        model.unet.in_channels = 2 * c
    ip2p = InstructPix2Pix(model.autoencoder, model.unet, model.text_encoder, float(model.scale_factor),
                           text_dropout=model.text_dropout, condition_dropout=condition_dropout, **model.schedule_args)
    ip2p.latent_drift.copy_(model.latent_drift)
    return ip2p.to(conv.weight.device)
