"""Replay a network's forward from a TorchScript trace inside gradient-free loops.

A reverse-diffusion loop calls its denoiser once per step, always on the same shapes. On a
CPU a small MONAI ``DiffusionModelUNet`` spends most of such a call in Python: LDSeg's
published denoiser runs about a thousand aten ops on its 4^3 latent, for a few million
multiply-adds. A trace runs the same aten ops without the Python in between, about half
the time per step (``benchmarks/ldseg.py``), with outputs equal bit for bit.

Nothing here changes what a network computes, and it never sees a call that needs
gradients: training, DDP and ``ckpt_export`` run the module itself.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

_TRACES: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _weights(module: nn.Module) -> tuple:
    # A trace holds the tensors it saw: in-place updates (optimiser steps, load_state_dict)
    # reach it, but a tensor replaced by another one (an assign=True load) would not.
    return tuple(t.data_ptr() for t in (*module.parameters(), *module.buffers()))


def _hooked(module: nn.Module) -> bool:
    # A trace runs the graph, not the modules, so a forward hook (feature capture, a call
    # counter) would silently stop firing.
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def replayer(module: nn.Module) -> Callable[..., torch.Tensor]:
    """A stand-in for ``module`` over one gradient-free loop: it traces once per input signature.

    Args:
        module: a network whose forward takes positional tensors only and has no
            data-dependent Python branches (MONAI's ``DiffusionModelUNet`` with ``(x, timesteps)``).

    Returns:
        ``fn(*inputs)`` equal to ``module(*inputs)``. It is the module itself while gradients
        are on, in training mode, inside an outer trace or script, under a dispatch mode, or
        when a submodule has forward hooks. Ask for a new one per loop: the weights are
        checked here, once, because walking them costs about a millisecond, a third of a
        traced step.
    """
    if (
        torch.is_grad_enabled()
        or module.training
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        # a trace made or run under a dispatch mode (FlopCounterMode, fake tensors) breaks it
        or is_in_torch_dispatch_mode()
        or _hooked(module)
    ):
        return module
    traces = _TRACES.setdefault(module, {})
    weights = _weights(module)
    if traces.get("weights") != weights:
        traces.clear()
        traces["weights"] = weights

    def call(*inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((x.shape, x.dtype, x.device) for x in inputs)
        trace = traces.get(key)
        if trace is None:
            with warnings.catch_warnings():
                # torch's own group_norm batch-size check reads a shape as a Python bool; the
                # trace is keyed on the shapes, so nothing it fixes can vary.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                # TorchScript is deprecated for torch.compile and torch.export, but neither
                # replaces it here: compiling costs tens of seconds per shape on a CPU, and an
                # exported program's module ran slower than the eager one. When tracing goes
                # away, the fallback below keeps sampling as it was.
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    trace = torch.jit.trace(module, inputs, check_trace=False)
                except Exception:  # noqa: BLE001 - a network the tracer cannot follow runs as it is
                    trace = module
            traces[key] = trace
        return trace(*inputs)

    return call
