"""The training iteration of every :class:`~ldmonai.ldseg.segmenter.Segmenter`.

MONAI's ``SupervisedTrainer`` computes ``loss(inferer(image), label)``; LDSeg's loss needs
intermediate tensors (noise, predicted noise, decoded logits) that only the model sees, so
the iteration asks the model for its ``training_outputs`` and hands them to the loss.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from ldmonai.networks import unwrap


class SegmenterTrainStep:
    """``iteration_update`` for ``monai.engines.SupervisedTrainer``.

    The trainer's ``loss_function`` must map ``(training_outputs, label)`` to a dict with a
    ``"loss"`` entry (see :class:`~ldmonai.ldseg.loss.SegmentationLoss`). The engine output
    holds ``image``, ``label``, ``loss`` and every loss term, so ``StatsHandler`` and
    ``TensorBoardStatsHandler`` log each term.
    """

    def __call__(self, engine: Any, batchdata: dict) -> dict:
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        device_type = image.device.type
        with torch.autocast(device_type, enabled=bool(engine.amp and device_type == "cuda")):
            outputs = engine.network(image, label)
            terms = engine.loss_function(outputs, label)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = terms["loss"]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(terms["loss"]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            terms["loss"].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        update_ema = getattr(unwrap(engine.network), "update_ema", None)
        if update_ema is not None:
            update_ema()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        for name, value in terms.items():
            engine.state.output[name] = value.detach()
        return engine.state.output


def loss_terms(output: dict | list) -> dict[str, float]:
    """``output_transform`` for ``TensorBoardStatsHandler``: every scalar loss term by name."""
    if isinstance(output, list):
        output = output[0]
    skip = {Keys.IMAGE, Keys.LABEL, Keys.PRED}
    return {
        f"train_{k}": float(v)
        for k, v in output.items()
        if k not in skip and isinstance(v, torch.Tensor) and v.numel() == 1
    }
