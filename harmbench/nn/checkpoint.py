"""Training checkpoints inside ``fit``: a long fit killed part-way resumes where it stopped.

The runner caches a model only once ``fit`` returns, so a GPU training killed after two hours would
otherwise start from zero. A plugin that trains in steps keeps a :class:`TrainingCheckpoint` in the
folder the runner gives it (``Harmonizer.checkpoint_dir``) and, every ``every`` steps, saves its
networks, optimisers, gradient scalers, the sampling generator and the step. On the next ``fit`` with the
same parameters and data (the runner's model folder is keyed on both) ``restore`` loads them back and the
loop continues from that step; the random stream continues too, so a resumed CPU fit ends bit-identical
to an uninterrupted one.

Files are written to a unique temporary name and renamed into place (atomic), and loaded with
``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary pickle.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["TrainingCheckpoint"]

_FILE = "training.pt"


class TrainingCheckpoint:
    """Save and restore a training loop's state every ``every`` steps in ``directory`` (None: disabled).

    ``objects`` maps names to anything with ``state_dict`` / ``load_state_dict`` (modules, optimisers,
    LR schedulers, ``torch.amp.GradScaler``); ``generator`` is the loop's ``torch.Generator``. ``tag``
    identifies the training run (e.g. the method's stage layout); a checkpoint with another tag is ignored.
    """

    def __init__(self, directory: str | Path | None, every: int = 100, tag: str = "") -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.directory = Path(directory) if directory is not None else None
        self.every = int(every)
        self.tag = str(tag)

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / _FILE

    def restore(self, objects: Mapping[str, Any], generator: torch.Generator | None = None) -> int:
        """Load the last checkpoint into ``objects`` (and ``generator``); the step to resume from (0: none)."""
        path = self.path
        if path is None or not path.exists():
            return 0
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            log.warning("ignoring the unreadable training checkpoint %s (%s)", path, exc)
            return 0
        if saved.get("tag") != self.tag or set(saved.get("objects", {})) != set(objects):
            log.warning("ignoring the training checkpoint %s: it belongs to another training run", path)
            return 0
        for name, obj in objects.items():
            obj.load_state_dict(saved["objects"][name])
        if generator is not None and "generator" in saved:
            generator.set_state(saved["generator"])
        step = int(saved["step"])
        log.info("resuming training from the checkpoint at step %d (%s)", step, path)
        return step

    def save(self, step: int, objects: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
        """Write the state after ``step`` completed steps (atomic)."""
        path = self.path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "tag": self.tag,
            "step": int(step),
            "objects": {name: obj.state_dict() for name, obj in objects.items()},
        }
        if generator is not None:
            state["generator"] = generator.get_state()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def maybe_save(self, step: int, objects: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
        """:meth:`save` when ``step`` (completed steps) is a multiple of ``every``."""
        if step > 0 and step % self.every == 0:
            self.save(step, objects, generator)

    def clear(self) -> None:
        """Remove the checkpoint (the training finished)."""
        path = self.path
        if path is not None:
            path.unlink(missing_ok=True)
