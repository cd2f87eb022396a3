"""Build models the way DeepSpeed will hold them: under ZeRO-3, partitioned from the first byte.

ZeRO-3 splits every parameter across processes, but only once `deepspeed.initialize` runs. A model built or
loaded before that is first materialised whole in every process: a 7B LLM in fp32 would need 28 GB on every rank
before training even starts. transformers avoids this when it knows the ZeRO-3 config at load time: while an
`HfDeepSpeedConfig` is alive, `from_pretrained` / `from_config` build the model inside `deepspeed.zero.Init`
(each parameter is partitioned as soon as it is created) and load the checkpoint one parameter at a time into the
partitions. `partitioned_init(ds_config)` is that window; everything a stage builds inside it is partitioned.

    with partitioned_init(ds_config):
        model = UnifiedModel.from_pretrained(folder)     # each rank holds 1/world of the weights
    engine = deepspeed.initialize(model=model, config=ds_config, ...)

Below ZeRO-3 (or without DeepSpeed) it does nothing: every rank needs every weight there anyway.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


def zero_stage(ds_config: dict[str, Any] | None) -> int:
    if not ds_config:
        return 0
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


@contextlib.contextmanager
def partitioned_init(ds_config: dict[str, Any] | None) -> Iterator[bool]:
    """While open, transformers builds and loads models partitioned under ZeRO-3 (yields True), else a no-op
    (yields False). The config must be the filled one `deepspeed.initialize` will get (no "auto" values)."""
    if zero_stage(ds_config) != 3:
        yield False
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # transformers keeps only a weak reference to this object: holding it here is what keeps ZeRO-3 loading on.
    hf_ds_config = HfDeepSpeedConfig(ds_config)
    try:
        yield hf_ds_config.is_zero3()
    finally:
        unset_hf_deepspeed_config()
        del hf_ds_config
        release_freed_memory()


def release_freed_memory() -> None:
    """Give the memory that zero.Init freed back to the OS (glibc's malloc_trim; a no-op elsewhere).

    zero.Init creates each parameter whole and then keeps only this process's partition. On the CPU, glibc serves
    those blocks from its heap and keeps the freed ones resident, so without this a process would go on holding
    about as much as the whole model after loading (`vqrae bench zero3-load` measures it). The trim changes no
    allocator setting; it only returns free pages.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    trim(0)


def is_partitioned(param) -> bool:
    """True for a parameter that ZeRO-3 has split across processes (its local tensor is a placeholder)."""
    return hasattr(param, "ds_id") and hasattr(param, "ds_numel")


def local_numel(param) -> int:
    """Elements of `param` this process holds: its ZeRO-3 partition, or the whole tensor."""
    return param.ds_tensor.numel() if is_partitioned(param) else param.numel()
