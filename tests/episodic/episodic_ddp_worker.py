"""Worker run by torchrun in test_episodic_distributed.py: a few DDP steps of a tiny model.

Each rank writes ``<out_dir>/rank<r>.json`` with its final parameters and collective results.
The test imports ``build_model``/``batches`` to compute the single-process reference.
"""
import sys

import torch
from torch import nn

STEPS, BATCH, LR = 3, 4, 0.1


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def batches(rank: int) -> list[torch.Tensor]:
    """Different data on every rank: ``STEPS`` tensors ``[BATCH, 3]``."""
    gen = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(BATCH, 3, generator=gen) for _ in range(STEPS)]


def train(model: nn.Module, steps_data: list[torch.Tensor]) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for x in steps_data:
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from episodic import distributed
    from episodic.io import atomic_write_json

    torch.set_num_threads(1)
    info = distributed.init_distributed(device="cpu")
    model = DistributedDataParallel(build_model())
    train(model, batches(info.rank))
    mean = distributed.all_reduce_mean(torch.tensor([float(info.rank), 10.0 * info.rank]))
    mean_int = distributed.all_reduce_mean(torch.tensor(info.rank + 1))
    gathered = distributed.all_gather_object({"rank": info.rank, "name": f"r{info.rank}"})
    distributed.barrier()
    result = {
        "rank": info.rank,
        "world_size": info.world_size,
        "local_rank": info.local_rank,
        "device": str(info.device),
        "is_main": distributed.is_main_process(),
        "get_world_size": distributed.get_world_size(),
        "params": [p.detach().flatten().tolist() for p in model.module.parameters()],
        "mean": mean.tolist(),
        "mean_int": mean_int.item(),
        "gathered": gathered,
    }
    atomic_write_json(f"{out_dir}/rank{info.rank}.json", result)
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
