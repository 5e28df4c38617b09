"""TensorBoard image grids of validation cases: image, sample, reference, uncertainty.

MONAI's ``TensorBoardImageHandler`` shows one tensor per tag and animates 3D volumes; a
single row per case with the segmentation overlaid on the image is what tells a user at a
glance whether a run is learning, so the row is built here from the same panel as the PNG
previews.
"""

from __future__ import annotations

import os

import torch
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

from ldmonai.io.preview import segmentation_panel, slice_row


class SegmentationGridHandler:
    """After each validation run, write one row per case for the first ``max_cases`` cases.

    The row is: image | image + sampled segmentation | image + reference label | entropy |
    variance (the last two when the evaluator output has them).

    Args:
        log_dir: TensorBoard folder (the trainer's, so the grids sit beside the scalars).
        max_cases: cases per validation run.
        tag: image tag prefix.
    """

    def __init__(self, log_dir: str | os.PathLike, max_cases: int = 2, tag: str = "val") -> None:
        self.log_dir = str(log_dir)
        self.max_cases = max_cases
        self.tag = tag
        self._writer: SummaryWriter | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.flush)

    def __call__(self, engine: Engine) -> None:
        # One batch's worth per validation run: the first iteration only.
        first = (engine.state.iteration - 1) % max(1, engine.state.epoch_length or 1) == 0
        if not first:
            return
        if self._writer is None:
            self._writer = SummaryWriter(self.log_dir)
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for i, item in enumerate(outputs[: self.max_cases]):
            maps = [item[k] for k in ("entropy", "variance") if k in item]
            seg = item.get("seg")
            if seg is None and "pred" in item:
                seg = item["pred"].argmax(0)
            label = item.get("label")
            if label is not None and label.shape[0] > 1:
                label = label.argmax(0)
            row = segmentation_panel(item["image"][0], seg=seg, label=label, maps=maps)
            self._writer.add_image(f"{self.tag}/case_{i}", row, global_step=engine.state.epoch, dataformats="HWC")

    def flush(self, engine: Engine) -> None:
        if self._writer is not None:
            self._writer.flush()


class SampleGridHandler:
    """Every ``interval`` epochs, one TensorBoard image of samples drawn from fixed noise.

    A generator's loss says little about its samples; the same seed at every interval shows
    how they change as training goes on.

    Args:
        log_dir: TensorBoard folder.
        sample_fn: ``sample_fn(model) -> (N, 1, H, W)`` images in [0, 1]; it gets the model
            unwrapped from DistributedDataParallel, in eval mode.
        interval: epochs between grids (and one after the last epoch).
        tag: image tag.
    """

    def __init__(self, log_dir: str | os.PathLike, sample_fn, interval: int = 5, tag: str = "samples") -> None:
        self.log_dir, self.sample_fn, self.interval, self.tag = str(log_dir), sample_fn, max(1, int(interval)), tag
        self._writer: SummaryWriter | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval) | Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        model = getattr(engine.network, "module", engine.network)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                images = self.sample_fn(model).detach().float().clamp(0, 1).cpu().numpy()
        finally:
            model.train(was_training)
        if self._writer is None:
            self._writer = SummaryWriter(self.log_dir)
        row = slice_row(images)
        self._writer.add_image(self.tag, row, global_step=engine.state.epoch, dataformats="HWC")
        self._writer.flush()
