"""Run by tests/test_train_deepspeed.py under `torchrun --nproc_per_node 2`: one launch checks, for one ZeRO
config, that (1) the exported final weights equal the parameters gathered from every process, (2) a run
that crashes after a checkpoint and is resumed logs the same losses as an uninterrupted run, and (3) when
OUT_DIR/encoder holds a tiny SigLIP, that a tokenizer stage-1 run starts and ends with every parameter and buffer
(the frozen codebook included) equal in both processes, and (4) when OUT_DIR/llm holds a tiny causal LM, that a
stage with `partitioned_init` gets it partitioned at build time under ZeRO-3.

    torchrun --nproc_per_node 2 tests/train_ds_worker.py zero3 OUT_DIR [KEY=VALUE ...]
Writes OUT_DIR/result.json (main process) with what the test asserts, and OUT_DIR/checksums-rankR.json (every
process): a digest of each weight, right after deepspeed.initialize ("start") and after the run ("end").
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import deepspeed
import torch
from safetensors.torch import load_file
from train_toy import SimulatedCrash, ToyConfig, ToyStage

from vqrae.train import distributed, load_config
from vqrae.train.backends import DeepSpeedBackend
from vqrae.train.engine import Engine
from vqrae.train.metrics import read_metrics

CHECKSUMS: dict[str, dict[str, dict[str, str]]] = {}  # run -> "start" / "end" -> weight name -> digest
_RUN = ["toy"]  # the run the next DeepSpeedBackend belongs to


def digests(module: torch.nn.Module) -> dict[str, str]:
    """sha1 of every parameter (gathered from the ZeRO-3 shards; a collective) and buffer of `module`."""
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {k: hashlib.sha1(v.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
                for k, v in module.state_dict().items()}


_backend_init = DeepSpeedBackend.__init__


def _recording_init(self, *args, **kwargs):
    _backend_init(self, *args, **kwargs)
    CHECKSUMS.setdefault(_RUN[0], {})["start"] = digests(self.module)


DeepSpeedBackend.__init__ = _recording_init


class LLMStage(ToyStage):
    """Fine-tunes a tiny pretrained causal LM on token ids derived from the toy data (only its loss matters)."""

    name = "toy-llm"
    partitioned_init = True
    partitioned_at_build: bool | None = None

    def build_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        from vqrae.train.zero3 import is_partitioned

        llm = AutoModelForCausalLM.from_pretrained(Path(self.config.output_dir).parent / "llm")
        LLMStage.partitioned_at_build = all(is_partitioned(p) for p in llm.parameters())
        return llm

    def param_groups(self, module):
        return [{"params": [p for p in module.parameters() if p.requires_grad], "name": "llm"}]

    def loss(self, model, batch, step):
        ids = (batch["x"].abs() * 10).long().clamp_max(63)
        return model(input_ids=ids, labels=ids).loss, {}

    def evaluate(self, model, step):
        return {}


def config(out: Path, ds: str, *extra: str) -> ToyConfig:
    return load_config(ToyConfig, None, [
        f"output_dir={out}", f"deepspeed={ds}", "max_steps=4", "batch_size=4", "grad_accum=2", "save_every=2",
        "log_every=1", "lr=3e-3", "warmup_steps=1", *sys.argv[3:], *extra,
    ])


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def main() -> None:
    ds, root = sys.argv[1], Path(sys.argv[2])
    logging.basicConfig(level=logging.WARNING)
    result: dict = {}

    # (1) an uninterrupted run; its export against the parameters gathered from the shards.
    engine = Engine(ToyStage(config(root / "full", ds)))
    engine.run()
    module = engine.backend.module
    CHECKSUMS["toy"]["end"] = digests(module)
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        gathered = {k: v.detach().float().clone() for k, v in module.state_dict().items()}
    rank = torch.distributed.get_rank()
    if rank == 0:
        exported = load_file(root / "full" / "final" / "model.safetensors")
        result["zero_stage"] = engine.backend.zero_stage
        result["world_size"] = torch.distributed.get_world_size()
        result["export_keys_match"] = sorted(exported) == sorted(gathered)
        result["export_max_diff"] = max((exported[k] - gathered[k]).abs().max().item() for k in gathered)
        result["partitioned"] = any(p.numel() == 0 or p.shape != p.ds_shape for p in module.parameters()
                                    if hasattr(p, "ds_shape"))

    # (2) crash during step 4 (after the step-2 checkpoint), then rerun the same config: it resumes.
    _RUN[0] = "toy-resumed"
    try:
        Engine(ToyStage(config(root / "resumed", ds, "crash_at=4"))).run()
    except SimulatedCrash:
        pass
    Engine(ToyStage(config(root / "resumed", ds))).run()

    # (3) tokenizer stage 1 on a tiny encoder (written by the test): every weight agrees between the processes.
    if (root / "encoder").is_dir():
        from vqrae.train.stages.tokenizer import TokenizerStage1, TokenizerStageConfig

        _RUN[0] = "tokenizer"
        tok_cfg = load_config(TokenizerStageConfig, None, [
            f"output_dir={root / 'tokenizer'}", f"deepspeed={ds}", f"encoder={root / 'encoder'}", "data=shapes",
            "data_num=8", "val_data=shapes", "val_num=4", "batch_size=2", "max_steps=2", "log_every=1",
            "model.codebook_size=32", "model.codebook_dim=32", "perceptual_weight=0.1", "lr=1e-3"])
        tok_engine = Engine(TokenizerStage1(tok_cfg))
        tok_engine.run()
        CHECKSUMS["tokenizer"]["end"] = digests(tok_engine.backend.module)
    # (4) a stage that asks for partitioned_init loads a pretrained LLM inside build_model (OUT_DIR/llm, written by
    # the test): under ZeRO-3 it must already be partitioned when build_model returns, before DeepSpeed sees it.
    if (root / "llm").is_dir():
        _RUN[0] = "llm"
        engine = Engine(LLMStage(config(root / "llm-run", ds, "max_steps=1", "save_every=0")))
        engine.run()
        if rank == 0:
            result["llm_partitioned_at_build"] = LLMStage.partitioned_at_build
    (root / f"checksums-rank{rank}.json").write_text(json.dumps(CHECKSUMS))
    distributed.barrier()
    if rank == 0:
        result["losses_full"] = losses(root / "full")
        result["losses_resumed"] = losses(root / "resumed")
        (root / "result.json").write_text(json.dumps(result))
    distributed.barrier()
    distributed.destroy()


if __name__ == "__main__":
    main()
