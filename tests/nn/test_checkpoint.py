"""In-fit training checkpoints: a killed loop resumes and ends where an uninterrupted one does."""

from __future__ import annotations

import torch

from harmbench.nn.checkpoint import TrainingCheckpoint


def _train(steps: int, checkpoint: TrainingCheckpoint, stop_after: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    objects = {"net": net, "opt": opt}
    start = checkpoint.restore(objects, gen)
    for step in range(start, steps):
        x = torch.randn(8, 3, generator=gen)
        loss = (net(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        checkpoint.maybe_save(step + 1, objects, gen)
        if stop_after is not None and step + 1 == stop_after:
            raise KeyboardInterrupt  # the run is killed here
    checkpoint.clear()
    return net


def test_resumed_training_matches_an_uninterrupted_one(tmp_path):
    reference = _train(10, TrainingCheckpoint(None))
    ckpt = TrainingCheckpoint(tmp_path / "ckpt", every=3, tag="linear")
    try:
        _train(10, ckpt, stop_after=7)
    except KeyboardInterrupt:
        pass
    assert ckpt.path.exists()
    resumed = _train(10, ckpt)
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not ckpt.path.exists()  # cleared once the training finished


def test_a_checkpoint_of_another_run_or_a_broken_file_is_ignored(tmp_path):
    TrainingCheckpoint(tmp_path, tag="a").save(5, {"net": torch.nn.Linear(2, 2)})
    assert TrainingCheckpoint(tmp_path, tag="b").restore({"net": torch.nn.Linear(2, 2)}) == 0
    assert TrainingCheckpoint(tmp_path, tag="a").restore({"net": torch.nn.Linear(2, 2)}) == 5
    (tmp_path / "training.pt").write_bytes(b"not a checkpoint")
    assert TrainingCheckpoint(tmp_path, tag="a").restore({"net": torch.nn.Linear(2, 2)}) == 0
