"""Process-group plumbing: who am I (rank, world size), start DeepSpeed's process group, barriers and reductions.

Launchers (`torchrun`, `deepspeed`) set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain
`vqrae train ...` has none of them and runs as rank 0 of 1.

Process-wide state: starting the process group is meant to last for the process, and so are the launcher variables
that `init_deepspeed_distributed` writes (with `setdefault`, never overwriting a launcher's) for a lone process:
DeepSpeed reads them from `os.environ` itself, then and later. DeepSpeed's table of compatible ops is changed only
for the duration of its process-group start (see `_skip_cpu_shm_allreduce_build`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        def env_int(name: str, default: int) -> int:
            raw = os.environ.get(name, str(default))
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None

        return cls(env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0))


def launched() -> bool:
    """True when a launcher started this process (torchrun / deepspeed set these)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_deepspeed_distributed() -> DistInfo:
    """Start DeepSpeed's process group (gloo on CPU, nccl on GPU); a lone process gets a group of one."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if not launched():
        # A lone `vqrae train ... deepspeed=zero2`: DeepSpeed still wants a launcher's environment (it reads
        # LOCAL_RANK itself, also after the start), so describe a group of one, as a launcher would. Deliberately
        # left in place for the rest of the process (setdefault: a launcher's values always win).
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, value)
    skip_shm = get_accelerator().device_name() == "cpu"
    with _skip_cpu_shm_allreduce_build() if skip_shm else contextlib.nullcontext():
        deepspeed.init_distributed()
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), DistInfo.from_env().local_rank)


@contextlib.contextmanager
def _skip_cpu_shm_allreduce_build() -> Iterator[None]:
    """Inside the block, DeepSpeed believes its CPU shared-memory comm op cannot be built; the entry is restored
    after.

    DeepSpeed's torch backend JIT-compiles a shared-memory all-reduce op on CPU (about 55 s on our 2-core machines)
    when its process group starts (`deepspeed.comm.torch.build_shm_op`, which asks the per-process table
    `deepspeed.ops.__compatible_ops__`). Only `inference_all_reduce` (AutoTP inference) uses that op; every training
    collective goes through torch.distributed (gloo). This relies on DeepSpeed internals (checked with 0.16-0.19;
    pyproject caps deepspeed below 0.20): when they are not there, it logs a warning and changes nothing (the run
    then pays for the build). VQRAE_DS_SHM_OP=1 keeps DeepSpeed's default.
    """
    if os.environ.get("VQRAE_DS_SHM_OP") == "1":
        yield
        return
    try:
        import deepspeed.ops
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        name = ShareMemCommBuilder.NAME
        table = deepspeed.ops.__compatible_ops__
        if not isinstance(table, dict):
            raise TypeError(f"deepspeed.ops.__compatible_ops__ is a {type(table).__name__}, not a dict")
    except (ImportError, AttributeError, TypeError) as exc:
        logger.warning("DeepSpeed's op table is not what vqrae expects (%s): its CPU shared-memory comm op may be "
                       "compiled now (about a minute, once)", exc)
        yield
        return
    missing = object()
    previous = table.get(name, missing)
    table[name] = False
    try:
        yield
    finally:
        if previous is missing:
            table.pop(name, None)
        else:
            table[name] = previous


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def barrier() -> None:
    if is_initialized() and tdist.get_world_size() > 1:
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (a no-op in one process)."""
    if is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def destroy() -> None:
    if is_initialized():
        tdist.destroy_process_group()
