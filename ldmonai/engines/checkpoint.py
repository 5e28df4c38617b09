"""Checkpoints that are written atomically and resume a killed run.

MONAI's ``CheckpointSaver`` writes in place (its disk saver is created with
``atomic=False``), so a run killed mid-save can leave a truncated file as the newest
checkpoint. These handlers write to a temporary beside the target and rename, and loading
uses ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from ldmonai.io.atomic import atomic_path, remove_stale_temps
from ldmonai.networks import unwrap

_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
logger = logging.getLogger(__name__)


def _is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def read_torch_file(path: str | os.PathLike, what: str, fix: str):
    """``torch.load(path, weights_only=True)`` on CPU, or one clear error naming the file.

    Any failure (missing, truncated, not a torch file, pickled code that ``weights_only``
    refuses) means the same to the user: this file cannot be used as ``what``.
    """
    from ldmonai.errors import LdmonaiError

    if not os.path.isfile(path):
        raise LdmonaiError(f"{what} not found", path, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise LdmonaiError(f"cannot read {what} ({type(err).__name__})", path, fix) from None


def load_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a local file, safely (``weights_only``), unwrapped from common wrappers."""
    state = read_torch_file(path, what, "pass the local path of a saved torch state dict")
    for key in ("state_dict", "network", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        from ldmonai.errors import LdmonaiError

        raise LdmonaiError(f"{what} is not a state dict of tensors", path, "save it with torch.save(model.state_dict(), path)")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def require_checkpoint(
    path: str | os.PathLike, bundle: str | None = None, demo: str = "demo_tiny.pt", quiet: bool = False
) -> str:
    """``path`` if it exists; else the shipped demo weights ``demo`` (beside ``path``, or those of
    ``bundles/<bundle>/models/`` when ``path`` is a config's default ``<bundle_root>/models/[<task>/]model.pt``),
    with a one-line notice on stderr; else a clear error saying how
    to produce the weights.

    The fallback lets a newcomer run a bundle's inference straight after cloning, as the README
    writes it, with ``--bundle_root`` a working folder of their own. The notice names the file
    used, so trained weights that are simply missing are never mistaken for the demo's: pass
    ``--ckpt_path`` to use any other file. ``quiet`` leaves the notice to a later call (a config
    that reads the checkpoint's settings before the loader loads it).
    """
    import sys

    from ldmonai.errors import LdmonaiError

    if Path(path).is_file():
        return str(path)
    shipped = Path(path).with_name(demo)
    # the configs' own defaults: models/model.pt, or models/<task>/model.pt (GDM's svct)
    default = Path(path).name == "model.pt" and "models" in (Path(path).parent.name, Path(path).parent.parent.name)
    if not shipped.is_file() and bundle is not None and default:
        from ldmonai.demo import BUNDLES

        shipped = BUNDLES / bundle / "models" / demo
    if shipped.is_file():
        if not quiet:
            print(f"ldmonai: note: {path} not found; using the shipped tiny demo weights {shipped} "
                  "(train the bundle, or pass --ckpt_path, to use others)", file=sys.stderr, flush=True)
        return str(shipped)
    raise LdmonaiError("no trained weights here", path,
                       "run the bundle's train config first, or pass --ckpt_path to a weights file")


def _epoch_checkpoints(save_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint_epoch=N.pt`` files in ``save_dir``, oldest epoch first."""
    found = []
    for path in Path(save_dir).glob("checkpoint_epoch=*.pt"):
        m = _PATTERN.search(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(save_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the largest N in ``save_dir``, or None."""
    found = _epoch_checkpoints(save_dir)
    return found[-1] if found else None


class ResumableCheckpoint:
    """Save the training state every ``save_interval`` epochs; resume from the newest on start.

    Args:
        save_dir: folder of ``checkpoint_epoch=N.pt`` files.
        save_dict: objects with ``state_dict``/``load_state_dict``: network, optimizer,
            schedulers. The engine it is attached to is added as ``trainer`` (epoch and
            iteration counters), which also spares bundle configs a circular reference.
        save_interval: epochs between saves.
        n_saved: how many recent checkpoints to keep.
        resume: load the newest checkpoint when the trainer starts.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping,
        save_interval: int = 1,
        n_saved: int = 2,
        resume: bool = True,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine: Engine) -> None:
        remove_stale_temps(self.save_dir)
        path = latest_checkpoint(self.save_dir)
        if path is None:
            return
        max_epochs = engine.state.max_epochs
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        Checkpoint.load_objects(to_load={k: unwrap(v) for k, v in self.save_dict.items()}, checkpoint=checkpoint)
        # A longer run may be asked for when resuming; never shorten to the saved value.
        engine.state.max_epochs = max(max_epochs or 0, engine.state.epoch)
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)

    def save(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        epoch = engine.state.epoch
        target = self.save_dir / f"checkpoint_epoch={epoch}.pt"
        if target.exists():
            return
        atomic_torch_save({k: unwrap(v).state_dict() for k, v in self.save_dict.items()}, target)
        old = _epoch_checkpoints(self.save_dir)
        for path in old[: max(0, len(old) - self.n_saved)]:
            path.unlink(missing_ok=True)


def checkpoint_config(path: str | os.PathLike, bundle: str | None = None, demo: str = "demo_tiny.pt") -> dict:
    """The model config saved in a checkpoint (``{"model": ..., "config": ...}``), else ``{}``.

    Resolves ``path`` as :func:`require_checkpoint` does (the shipped demo weights when the
    default file is missing), silently: the loader that follows prints the notice once. A
    plain state dict, or no file at all, gives ``{}``, so configs fall back to their own
    defaults and the loader reports what is wrong.
    """
    try:
        resolved = require_checkpoint(path, bundle, demo, quiet=True)
    except Exception:  # noqa: BLE001  (the loader reports a missing file)
        return {}
    try:
        saved = torch.load(resolved, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (the loader reports a corrupt file)
        return {}
    config = saved.get("config") if isinstance(saved, dict) else None
    return dict(config) if isinstance(config, dict) else {}


class BestModelSaver:
    """Write the network's weights to ``filename`` whenever the evaluator's key metric improves.

    Attach to a MONAI evaluator that has a ``key_val_metric``; it reads ``best_metric_epoch``.
    The first validation always writes, so a run leaves a model file even if it never improves.

    The file holds what inference samples with: a model's ``sampling_state_dict()`` where it has
    one (LDSeg: the denoiser's EMA in the denoiser's place), else its ``state_dict()``; the
    resumable training state, average included, is :class:`ResumableCheckpoint`'s.

    With ``config`` (the network's arguments, label names, spacing: anything JSON-like), the file
    is ``{"model": state_dict, "config": config}``, which MONAI's ``CheckpointLoader`` with
    ``load_dict={"model": net}`` reads unchanged, and inference reads its model from
    (:func:`checkpoint_config`), so ``--ckpt_path`` alone is enough.
    """

    def __init__(
        self, save_dir: str | os.PathLike, network: torch.nn.Module, filename: str = "model.pt", config: Mapping | None = None
    ) -> None:
        self.path = Path(save_dir) / filename
        self.network = network
        self.config = None if config is None else _plain(config)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        best_epoch = getattr(engine.state, "best_metric_epoch", -1)
        if best_epoch == engine.state.epoch or not self.path.exists():
            network = unwrap(self.network)
            # the sampling weights (an LDSeg's EMA in place of its denoiser), not the training state
            state = getattr(network, "sampling_state_dict", network.state_dict)()
            atomic_torch_save(state if self.config is None else {"model": state, "config": self.config}, self.path)


def _plain(value):
    """Config values as plain Python (lists, dicts with string keys), what ``weights_only`` loads."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class ConfiguredCheckpointLoader:
    """Load ``network``'s weights, or say in one line which setting does not match the checkpoint.

    MONAI's ``CheckpointLoader`` reports a wrong ``num_classes`` or ``spatial_dims`` as a
    ``size mismatch`` deep inside ``load_state_dict``. This handler compares the settings the
    run uses (``config``) with those saved beside the weights first, and names the flag to
    drop or change; a plain state dict without a config is checked by loading alone.

    Args:
        load_path: the weights (a state dict, or ``{"model": ..., "config": ...}``).
        network: the module to load into (the EMA average included).
        config: the settings this run built ``network`` from.
    """

    def __init__(self, load_path: str | os.PathLike, network: torch.nn.Module, config: Mapping | None = None) -> None:
        self.load_path = str(load_path)
        self.network = network
        self.config = _plain(config or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        from ldmonai.errors import LdmonaiError

        saved = read_torch_file(self.load_path, "checkpoint", "pass --ckpt_path to a model.pt written by the bundle's training")
        state, saved_config = (saved["model"], saved.get("config") or {}) if isinstance(saved, dict) and "model" in saved else (saved, {})
        differ = {k: (v, self.config[k]) for k, v in saved_config.items() if k in self.config and self.config[k] != v}
        if differ:
            trained = ", ".join(f"{k}={v[0]}" for k, v in differ.items())
            used = ", ".join(f"{k}={v[1]}" for k, v in differ.items())
            raise LdmonaiError(f"the checkpoint was trained with {trained}, but this run uses {used}", self.load_path,
                               "leave these settings out (they are read from the checkpoint) or pass the trained values")
        try:
            unwrap(self.network).load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = str(err).split("\n")[1].strip() if "\n" in str(err) else str(err)
            raise LdmonaiError(f"the weights do not fit this network ({detail[:160]})", self.load_path,
                               "pass the spatial_dims, num_classes and preset the model was trained with") from None
