"""One rank of tests/test_zero3_load.py (run by torchrun, 2 processes): load a saved unified model inside
`partitioned_init` with a ZeRO-3 config and report what this rank holds."""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import load_file

from vqrae.train import distributed
from vqrae.train.zero3 import is_partitioned, local_numel, partitioned_init
from vqrae.unified_model import UnifiedModel


def main(folder: str, out: str) -> None:
    import deepspeed

    dist = distributed.init_deepspeed_distributed()
    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "bf16": {"enabled": False}}
    with partitioned_init(cfg) as active:
        model = UnifiedModel.from_pretrained(folder, dtype=torch.float32)
    saved = load_file(f"{folder}/model.safetensors")
    params = dict(model.named_parameters())
    llm = [p for n, p in params.items() if n.startswith("llm.")]
    # every saved weight, gathered from the partitions, equals the checkpoint
    max_diff = 0.0
    for name, p in params.items():
        if name not in saved:
            continue
        with deepspeed.zero.GatheredParameters([p]):
            max_diff = max(max_diff, float((p.detach().float() - saved[name].float()).abs().max()))
    result = {
        "active": bool(active),
        "world": dist.world_size,
        "llm_all_partitioned": all(is_partitioned(p) for p in llm),
        "llm_local": sum(local_numel(p) for p in llm),
        "llm_total": sum(int(p.ds_numel) if is_partitioned(p) else p.numel() for p in llm),
        "max_diff": max_diff,
        "after_window": __import__("transformers").integrations.is_deepspeed_zero3_enabled(),
    }
    with open(out.replace("{rank}", str(dist.rank)), "w") as f:
        json.dump(result, f)
    distributed.barrier()
    distributed.destroy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
