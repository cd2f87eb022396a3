"""Launched by tests/test_unified_deepspeed.py with torchrun (2 processes, gloo, CPU): the unified stages under a
DeepSpeed config given on the command line.

OUT_DIR holds `llm/` (a tiny causal LM with its tokenizer) and `vqrae/` (a tiny tokenizer), written by the test.
1. unified-align from llm + vqrae (the model is built whole, then DeepSpeed partitions it);
2. unified-sft from align's export (`init=`: under ZeRO-3 loaded partitioned inside build_model);
3. the trained model's logits on a fixed batch, computed through the DeepSpeed engine by every process: rank 0
   writes them (and the batch) to OUT_DIR so the test can compare them with the exported folder's.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from vqrae.train import distributed, load_config
from vqrae.train.engine import Engine
from vqrae.train.stages import get_stage


def run(name: str, out: Path, ds: str, data: str, *overrides: str) -> Engine:
    cls = get_stage(name)
    cfg = load_config(cls.config_class, None, [
        f"output_dir={out}", f"deepspeed={ds}", f"data={data}", "batch_size=2", "max_steps=2", "log_every=1", "val_num=2",
        "warmup_steps=0", "max_length=256", "lr=1e-2", *overrides])
    engine = Engine(cls(cfg))
    engine.run()
    return engine


def main() -> None:
    ds, root = sys.argv[1], Path(sys.argv[2])
    logging.basicConfig(level=logging.WARNING)
    run("unified-align", root / "align", ds, "[{task: describe, data: shapes, num: 8}]",
        f"llm={root / 'llm'}", f"vqrae={root / 'vqrae'}")
    engine = run("unified-sft", root / "sft", ds, "[{task: conversation, data: shapes, num: 8}, "
                 "{task: t2i, data: shapes, num: 8}]", f"init={root / 'align' / 'final'}",
                 # code rows re-derived from align's projector (whole tensors, then partitioned under ZeRO-3), and
                 # batches not grouped by source, so one process can hold only text-to-image records while the
                 # other holds images: the projector must still get a gradient on both
                 "reinit_codes=true", "group_by_source=false", "max_steps=4", "batch_size=1")
    stage, model = engine.stage, engine.backend.model
    rank = torch.distributed.get_rank()
    partitioned = any(hasattr(p, "ds_id") for p in engine.backend.module.parameters())  # ZeRO-3 managed
    batch = stage.collate([stage.train_dataset()[i] for i in range(2)])
    batch.pop("skipped")
    model.eval()
    with torch.no_grad():
        logits = model(**stage.to_device(batch), return_logits=True).logits
    if rank == 0:
        torch.save({"batch": batch, "logits": logits.float().cpu()}, root / "reference.pt")
        (root / "result.json").write_text(json.dumps({"partitioned": partitioned,
                                                      "world_size": torch.distributed.get_world_size()}))
    distributed.barrier()
    distributed.destroy()


if __name__ == "__main__":
    main()
