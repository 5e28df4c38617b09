"""The training iterations of GDM's one-step generator and of the flow-matching baseline.

GDM's objective returns a gradient for the generator output rather than a loss (the drift
and fidelity gradients are coordinated on that tensor), which ``SupervisedTrainer``'s
default iteration cannot express; the flow baseline needs its noise and timesteps drawn
inside the model. Both log every term through the engine output, like
:class:`~ldmonai.engines.segmentation.SegmenterTrainStep`.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys


def _batch(engine: Any, batchdata: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
    mask = batchdata.get("mask")
    if mask is not None:
        mask = torch.as_tensor(mask).to(engine.state.device)
    return image, label, mask


def finish_iteration(engine: Any, terms: dict) -> dict:
    """Optimizer step, events, and every loss term into the engine output (shared by the custom iterations)."""
    engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
    engine.optimizer.step()
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    engine.state.output[Keys.LOSS] = terms["loss"]
    for name, value in terms.items():
        engine.state.output[name] = value.detach()
    return engine.state.output


class GeneratorTrainStep:
    """``iteration_update`` for a one-step generator trained with a
    :class:`~ldmonai.gdm.objective.GDMObjective` as the trainer's ``loss_function``.

    Batches hold ``image`` (the MR or FBP input), ``label`` (the target CT, unit range) and
    optionally ``mask``.
    """

    def __call__(self, engine: Any, batchdata: dict) -> dict:
        image, label, mask = _batch(engine, batchdata)
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        output = engine.network(image)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        grad, terms = engine.loss_function(output, label, mask)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        output.backward(grad)
        engine.state.output[Keys.PRED] = output.detach()
        return finish_iteration(engine, terms)


class FlowTrainStep:
    """``iteration_update`` for :class:`~ldmonai.gdm.rflow.RFlowTranslator`: the network
    computes its own velocity loss when called with ``(condition, target)``."""

    def __call__(self, engine: Any, batchdata: dict) -> dict:
        image, label, _ = _batch(engine, batchdata)
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        # through forward, so that a DDP wrapper synchronises the gradients
        loss = engine.network(image, label)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        return finish_iteration(engine, {"loss": loss})
