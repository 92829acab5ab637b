"""Two-process DDP training on the CPU (gloo), launched as users would: ``torchrun --nproc_per_node 2``."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from cardiac_ai.training import load_checkpoint

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    from cardiac_ai.models import build_network
    from cardiac_ai.training import QuadraticPositionSampler, Trainer, TrainingConfig

    out, sampling = Path(sys.argv[1]), sys.argv[2]
    rank, world_size = int(__import__("os").environ["RANK"]), int(__import__("os").environ["WORLD_SIZE"])


    class ThresholdSlices(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            self.images = np.random.default_rng(seed).random((n, 1, 16, 16)).astype(np.float32)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, index):
            image = torch.from_numpy(self.images[index])
            return {"image": image, "label": (image > 0.5).long()}


    config = TrainingConfig(network="tiny_unet2d", network_kwargs={"out_channels": 2}, epochs=2, batch_size=3,
                            learning_rate=1e-2, seed=1)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    network = build_network(config.network, **config.network_kwargs)
    sampler = None
    if sampling == "quadratic":
        sampler = QuadraticPositionSampler(np.linspace(0, 1, 10), batch_size=3, num_batches=6, seed=1,
                                           num_replicas=world_size, rank=rank)
    trainer = Trainer(config, network, ThresholdSlices(10, 0), ThresholdSlices(4, 1), out_dir=out / "run",
                      device="cpu", batch_sampler=sampler)
    result = trainer.fit()
    steps = len(trainer.train_loader(0))
    torch.save({"weights": network.state_dict(), "history": list(result.history), "steps": steps},
               out / f"rank{rank}.pt")
    """
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(tmp_path, sampling: str) -> list[dict]:
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(script), str(tmp_path), sampling]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["shuffle", "quadratic"])
def test_two_gloo_processes_train_to_identical_weights(tmp_path, sampling):
    ranks = run_torchrun(tmp_path, sampling)
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    # losses averaged over ranks, metric broadcast from rank 0 (only the timings differ)
    histories = [[{k: v for k, v in r.items() if k != "seconds"} for r in rank["history"]] for rank in ranks]
    assert histories[0] == histories[1] and len(histories[0]) == 2
    # each rank takes its share: 6 batches / 2 ranks, or ceil((10 slices / 2 ranks) / batch of 3)
    assert ranks[0]["steps"] == ranks[1]["steps"] == (3 if sampling == "quadratic" else 2)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 2
    for key, value in last["model"].items():
        assert torch.equal(value, ranks[0]["weights"][key])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv"]
