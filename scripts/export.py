"""`vqrae export`: turn a training checkpoint into something to ship, or prepare a model folder to train from.

- `merge-lora`: a LoRA checkpoint (base model + adapters, `unified_model.lora.save_lora`) into one plain unified
  model folder.
- `init-unified`: a new unified model (an LLM + a VQRAE: vocabulary extended, projector built, code embeddings
  initialised) written as a folder once, on the CPU. The unified stages then start from it with `init=FOLDER`, which
  under ZeRO-3 loads it partitioned: a 7B LLM is never whole on any GPU process.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from vqrae.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a training checkpoint (merge LoRA adapters)",
        description="Export a training checkpoint as a plain model folder.",
    )
    what = p.add_subparsers(dest="export_command", metavar="WHAT", required=True)
    m = what.add_parser(
        "merge-lora",
        help="merge a LoRA checkpoint's adapters into a plain unified model folder",
        description="Load a LoRA checkpoint (FOLDER/base: the unified model, FOLDER/adapter: the peft adapters and "
        "trained vocabulary rows), fold the adapters into the LLM's weights and write a plain unified model folder "
        "that UnifiedModel.from_pretrained, `vqrae chat` and `vqrae generate` load.",
    )
    m.add_argument("--model", required=True, help="the LoRA checkpoint folder (written by save_lora)")
    m.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    m.set_defaults(func=run_merge_lora)
    i = what.add_parser(
        "init-unified",
        help="build a new unified model from an LLM and a VQRAE and save it (the start of the unified stages)",
        description="Extend the LLM's vocabulary with the image specials and K code rows, build the projector, "
        "initialise the code embeddings from the projected codebook, and save the whole model as a folder that "
        "`vqrae train unified-align ... init=FOLDER` starts from (partitioned under ZeRO-3).",
    )
    i.add_argument("--llm", required=True, help="a Hugging Face causal LM: local folder or hub id")
    i.add_argument("--vqrae", required=True, help="a VQRAE tokenizer folder (tokenizer-stage2's final/)")
    i.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    i.add_argument("--template", default="auto", help="conversation template (default: the LLM's chat template)")
    i.add_argument("--projector", default="mlp2x_gelu", choices=["mlp2x_gelu", "linear"])
    i.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights as saved (auto: the LLM's own)")
    i.set_defaults(func=run_init_unified)


def _empty_target(path: str) -> Path:
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"--out {path} already exists and is not an empty folder")
    return out


def _save_atomically(model, out: Path) -> None:
    """Written beside the target and renamed when complete: an interrupted export leaves no half-written model."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        model.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_merge_lora(args: argparse.Namespace) -> int:
    from vqrae.unified_model.lora import check_lora_folder, load_lora, merge_lora

    check_lora_folder(args.model)
    out = _empty_target(args.out)
    # dtype "auto" (from_pretrained's default): merge and save in the checkpoint's own dtype, on the CPU.
    _save_atomically(merge_lora(load_lora(args.model, device="cpu")), out)
    print(f"merged the LoRA adapters of {args.model} into {out}")
    return 0


def run_init_unified(args: argparse.Namespace) -> int:
    import torch

    from vqrae.unified_model import UnifiedModel

    out = _empty_target(args.out)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    model = UnifiedModel.from_llm(args.llm, args.vqrae, dtype=dtype, template=args.template,
                                  projector_type=args.projector)
    _save_atomically(model, out)
    c = model.config
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, codes at "
          f"[{c.code_range[0]}, {c.code_range[1]}); train it with: vqrae train unified-align --config ... init={out}")
    return 0
