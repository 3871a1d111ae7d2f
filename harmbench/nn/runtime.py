"""Device, seeding, precision and state plumbing shared by every torch-based plugin.

Rules these helpers enforce, so each plugin does not reinvent them:

- no global random state: weights are initialised and batches drawn inside :func:`seeded`, which forks
  torch's generators and restores them afterwards, with the seed taken from the caller's
  ``numpy.random.Generator``;
- deterministic on CPU: :func:`deterministic` turns on ``torch.use_deterministic_algorithms`` and
  fixes the CPU thread count for the duration of a fit or an inference, restoring the caller's settings;
- mixed precision only on CUDA (:func:`autocast`, :func:`grad_scaler`); CPU stays in float32;
- weights travel as plain float arrays (:func:`module_state`, :func:`load_module_state`), so a
  fitted model saves to ``.npz`` like every other harmonizer, without pickle.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = [
    "autocast",
    "deterministic",
    "grad_scaler",
    "load_module_state",
    "module_state",
    "resolve_device",
    "seed_from",
    "seeded",
]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` → a ``torch.device``.

    Asking for CUDA where none is available falls back to the CPU with a warning rather than failing
    a whole run: the runner records the device that was actually used.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available; using the CPU", str(device))
        return torch.device("cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda[:N]'")
    return dev


def seed_from(rng: np.random.Generator | None, default: int = 0) -> int:
    """A 63-bit torch seed drawn from the caller's generator (``default`` when there is none)."""
    if rng is None:
        return int(default)
    return int(rng.integers(0, 2**63 - 1))


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[torch.Generator]:
    """Run a block with torch's global generators seeded, restoring their previous state on exit.

    Layer constructors draw from the global generator, so this is how weight initialisation becomes
    a function of ``seed`` without leaking state into the caller. Also yields a dedicated CPU
    ``torch.Generator`` seeded the same way for explicit sampling (batches, patches).
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        yield generator


#: Torch CPU threads inside :func:`deterministic`. Convolution kernels split their sums by thread, so
#: the thread count changes the last bits of a result, and a few hundred training steps amplify those
#: into different leaderboard digits. A fixed count makes a fit bit-identical on every machine with at
#: least this many cores (and the same CPU instruction set); ``HARMBENCH_TORCH_THREADS`` overrides it.
DETERMINISTIC_THREADS = 2


def _deterministic_threads() -> int:
    value = os.environ.get("HARMBENCH_TORCH_THREADS", "")
    if not value:
        return DETERMINISTIC_THREADS
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"HARMBENCH_TORCH_THREADS must be a positive integer, got {value!r}")
    return threads


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Deterministic torch kernels and a fixed CPU thread count inside the block; both restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    # warn_only: a kernel without a deterministic variant (some CUDA backward passes) warns
    # instead of failing the fit; on the CPU every op used here is deterministic.
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    if enabled:
        torch.set_num_threads(_deterministic_threads())
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.set_num_threads(previous_threads)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA when ``enabled``; a no-op context on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A gradient scaler for float16 training on CUDA; disabled (a pass-through) elsewhere."""
    return torch.amp.GradScaler("cuda", enabled=enabled and device.type == "cuda")


def module_state(module: torch.nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """The module's parameters and buffers as CPU numpy arrays keyed ``<prefix>.<name>``."""
    return {f"{prefix}.{k}": v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_module_state(module: torch.nn.Module, state: Mapping[str, np.ndarray], prefix: str) -> torch.nn.Module:
    """Load arrays written by :func:`module_state`; a missing or unexpected key names itself."""
    head = f"{prefix}."
    tensors = {k[len(head) :]: torch.from_numpy(np.asarray(v).copy()) for k, v in state.items() if k.startswith(head)}
    expected = set(module.state_dict())
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise ValueError(
            f"saved state for {prefix!r} does not fit the network: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    module.load_state_dict(tensors)
    return module
