"""harmbench.nn.runtime: seeding without global state, determinism settings restored, weights as arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmbench.nn.runtime import (
    deterministic,
    load_module_state,
    module_state,
    resolve_device,
    seed_from,
    seeded,
)


def test_seeded_initialisation_is_reproducible_and_leaves_global_state_alone():
    before = torch.random.get_rng_state()
    with seeded(7):
        a = torch.nn.Conv3d(1, 4, 3).weight.detach().clone()
    with seeded(7):
        b = torch.nn.Conv3d(1, 4, 3).weight.detach().clone()
    with seeded(8):
        c = torch.nn.Conv3d(1, 4, 3).weight.detach().clone()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(before, torch.random.get_rng_state())


def test_seed_from_draws_from_the_callers_generator():
    assert seed_from(np.random.default_rng(1)) == seed_from(np.random.default_rng(1))
    assert seed_from(None, default=5) == 5


def test_deterministic_pins_threads_and_restores_settings(monkeypatch):
    torch.set_num_threads(1)
    was = torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("HARMBENCH_TORCH_THREADS", "3")
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled() == was
    monkeypatch.setenv("HARMBENCH_TORCH_THREADS", "zero")
    with pytest.raises(ValueError, match="HARMBENCH_TORCH_THREADS"), deterministic():
        pass


def test_module_state_round_trip_and_mismatch_names_the_keys():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Conv3d(2, 1, 1))
    state = module_state(net, "dec")
    assert all(isinstance(v, np.ndarray) for v in state.values())
    other = load_module_state(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Conv3d(2, 1, 1)), state, "dec")
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), other.parameters(), strict=True))
    with pytest.raises(ValueError, match="missing"):
        load_module_state(torch.nn.Conv3d(1, 2, 3), state, "dec")


def test_cuda_without_a_gpu_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cuda").type == "cpu"
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")
