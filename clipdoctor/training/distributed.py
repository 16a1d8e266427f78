"""Scale-out on Lightning DDP: the processes and the process group exist before any data work.

Why before `trainer.fit`: the stages ahead of it (decoding clips into the frame cache,
computing frozen features) are split across the ranks, so every rank must know its rank and
be able to wait for the others. Lightning itself starts the processes and the group only in
`fit`. So `start` builds a Trainer with the run's accelerator / devices / num_nodes /
strategy and lets Lightning's own strategy do it early:

- its launcher starts the other local processes: `clipdoctor train ... --devices 2` re-runs
  the same command once more with LOCAL_RANK=1 (Lightning's subprocess launcher); under
  `torchrun` or SLURM `srun` the processes exist already and nothing is started
  (TorchElasticEnvironment / SLURMEnvironment say so);
- `strategy.setup_environment()` joins the process group: gloo on CPUs, nccl on GPUs.

Every later Trainer of the run finds the group initialised and uses it. Only strategies that
run the whole command in every process can share the stages before `fit`; the spawn-based
ones (`ddp_spawn`, notebooks) cannot, and the config does not offer them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch.distributed as dist

from clipdoctor.config import TrainConfig
from clipdoctor.errors import ClipdoctorError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank r of world_size (0 of 1 without DDP).

    `shard`, `all_gather` and `barrier` are collective or rank-dependent: under DDP every rank
    must reach the same calls in the same order."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """Every world_size-th item from position rank: disjoint, together all items."""
        return list(items[self.rank::self.world_size])

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order; also waits for all ranks."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def finish(self) -> None:
        """After training: wait for all ranks, then leave the group, so that rank 0's final
        evaluation runs alone while the other ranks exit."""
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


SINGLE = Ranks()


def current() -> Ranks:
    """The Ranks of the initialised torch.distributed group, else SINGLE."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE


def start(config: TrainConfig) -> Ranks:
    """Start (or join) the run's DDP processes and process group; SINGLE when not distributed.

    Called at the top of training by every process, so the processes it starts run the whole
    command from there too (module docstring)."""
    if dist.is_available() and dist.is_initialized():
        return current()
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    trainer = L.Trainer(accelerator=config.accelerator, devices=config.devices,
                        num_nodes=config.num_nodes, strategy=config.strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    strategy = trainer.strategy
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if not isinstance(strategy, DDPStrategy):
        if launched > 1:  # torchrun started N processes but the run asks for one device
            raise ClipdoctorError(
                f"launched as {launched} processes (WORLD_SIZE={launched}) but the run uses one "
                f"device (--devices {config.devices} --num-nodes {config.num_nodes}); pass "
                "--devices N --num-nodes M --strategy ddp to match the launcher")
        return SINGLE
    assert strategy.launcher is not None
    try:  # starts the other local processes unless torchrun / SLURM did
        strategy.launcher.launch(lambda: None)
    except ValueError as e:  # the launcher's world size differs from devices x num_nodes
        raise ClipdoctorError(f"{e} (pass --devices and --num-nodes matching the launcher)") from None
    strategy.setup_environment()  # joins the process group (gloo on CPU, nccl on GPU)
    ranks = current()
    log.info("DDP rank %d of %d (%s backend, %s)", ranks.rank, ranks.world_size,
             dist.get_backend(), strategy.root_device)
    return ranks

