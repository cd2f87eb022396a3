"""`vqrae bench generate`: our image sampler against the same model's Hugging Face `generate()` with its own
classifier-free guidance, and against the bare forward steps the sampler is built on.

One random unified model (Qwen2 LLM of the given size, codes appended to its vocabulary), the same prompts, the same
number of image tokens, sampling with the same temperature / top-k / top-p and guidance scale, in one run. Rows:
- ours: `unified_model.generation.sample_image_codes`: conditional and unconditional rows in one batch, one
  forward per token, logits restricted to the code range;
- HF generate: `llm.generate(..., guidance_scale=s, negative_prompt_ids=<our unconditional prompts>)`, which runs
  the unconditional branch as a second forward per token (`UnbatchedClassifierFreeGuidanceLogitsProcessor`), with a
  logits processor that restricts sampling to the code range;
- bare forward: the same forward passes as ours (prefill, then one cached step per token on all rows) with a fixed
  next token and no sampling: the floor of any sampler on this model.
Times are the best of --repeats runs after a warm-up (the usual estimator on a shared machine, where noise only
ever adds time), the three paths interleaved in rotating order so that noise hits all of them alike.
Before timing, greedy runs of ours and of HF's CFG are compared code by code: they compute the same guided logits,
so images agree until a near-tie (logits within ~1e-6) that float rounding in a batch of 2B rows vs two batches of
B rows breaks differently; from there the two images go their own ways.
"""

from __future__ import annotations

import argparse
import time

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden-size", type=int, default=256, help="LLM width (default 256)")
    p.add_argument("--layers", type=int, default=4, help="LLM depth (default 4)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--codebook-size", type=int, default=4096, help="K image codes (default 4096)")
    p.add_argument("--grid", type=int, default=16, help="image grid side: grid^2 tokens per image (default 16)")
    p.add_argument("--prompts", type=int, default=4, help="images per batch (default 4; CFG doubles the rows)")
    p.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale (default 4.0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per path after a warm-up (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: steadier than 2 on a shared 2-core machine)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


PROMPTS = ["a red circle", "a green triangle above a yellow circle", "two blue squares on the left",
           "a purple star below an orange square and a small red circle"]


def _setup(args: argparse.Namespace):
    from vqrae.unified_model.testing import tiny_unified_model

    model = tiny_unified_model(
        seed=0, image_size=8 * args.grid, vqrae_overrides={"codebook_size": args.codebook_size},
        llm_kwargs={"hidden_size": args.hidden_size, "num_layers": args.layers, "num_heads": args.heads},
    ).to(args.device)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    return model, prompts


class _CodeRange:
    """HF logits processor: only the code ids may be sampled (what our sampler does by slicing)."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __call__(self, input_ids, scores):
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.lo : self.hi] = scores[:, self.lo : self.hi]
        return masked


def _cases(args, model, prompts):
    from transformers import LogitsProcessorList

    from vqrae.unified_model.generation import decode, left_pad, sample_image_codes

    n = model.config.num_image_tokens
    lo, hi = model.config.code_range
    dev = args.device
    proc, pad = model.processor, model.config.pad_token_id
    cond_rows = [proc.t2i_prompt_ids(p) for p in prompts]
    uncond_rows = [proc.t2i_prompt_ids(p, uncond=True) for p in prompts]
    cond, uncond = left_pad(cond_rows, pad), left_pad(uncond_rows, pad)
    rows_ids, rows_mask = left_pad(cond_rows + uncond_rows, pad)  # the batch our sampler builds
    fixed = torch.full((len(rows_ids),), lo, dtype=torch.long, device=dev)
    seeds = list(range(len(prompts)))
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}

    def ours(greedy: bool = False):
        s = dict(sampling, temperature=0.0) if greedy else sampling
        return sample_image_codes(model, prompts, seeds, cfg_scale=args.cfg_scale, **s)

    def hf(greedy: bool = False):
        s = {"do_sample": False} if greedy else dict(do_sample=True, **sampling)
        out = model.llm.generate(
            input_ids=cond[0].to(dev), attention_mask=cond[1].to(dev), negative_prompt_ids=uncond[0].to(dev),
            negative_prompt_attention_mask=uncond[1].to(dev), guidance_scale=args.cfg_scale,
            max_new_tokens=n, min_new_tokens=n, logits_processor=LogitsProcessorList([_CodeRange(lo, hi)]),
            pad_token_id=model.config.pad_token_id, eos_token_id=None, use_cache=True, **s,
        )
        return out[:, cond[0].shape[1]:] - lo

    @torch.no_grad()
    def bare():
        embeds = model.embed(rows_ids.to(dev))
        for _ in decode(model.llm, embeds, rows_mask, n, lambda step, logits: fixed):
            pass

    return {"ours": ours, "hf": hf, "bare": bare}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def main(args: argparse.Namespace) -> int:
    from vqrae.unified_model.generation import validate_sampling

    validate_sampling(args.temperature, args.top_k, args.top_p, args.cfg_scale)
    for name in ("hidden_size", "layers", "heads", "codebook_size", "grid", "prompts", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    model, prompts = _setup(args)
    cases = _cases(args, model, prompts)
    n = model.config.num_image_tokens

    g_ours, g_hf = cases["ours"](greedy=True), cases["hf"](greedy=True)
    same = g_ours.cpu() == g_hf.cpu()
    agree = same.float().mean().item()
    diverged = [int((~row).nonzero()[0]) for row in same if not bool(row.all())]
    s_ours, s_hf = cases["ours"](), cases["hf"]()
    in_range = all(int(c.min()) >= 0 and int(c.max()) < model.config.codebook_size for c in (s_ours, s_hf))

    times: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(_timed(cases[name], args.device))
    med = {k: min(v) for k, v in times.items()}

    vocab = model.llm.get_output_embeddings().weight.shape[0]
    print(f"image-token sampling: Qwen2 h={args.hidden_size} x {args.layers} layers, vocab {vocab} "
          f"(K={args.codebook_size} codes), {len(prompts)} prompts x {n} tokens, CFG {args.cfg_scale} "
          f"({2 * len(prompts)} rows), T={args.temperature} top-k={args.top_k} top-p={args.top_p}, "
          f"{args.device}, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    print(f"greedy CFG codes identical to HF generate(guidance_scale): {agree:.1%} "
          f"({len(prompts) - len(diverged)}/{len(prompts)} images identical"
          + (f"; others first differ at token {diverged}, from float-rounding near-ties" if diverged else "")
          + f"); sampled codes all in the code range: {in_range}")
    tokens = len(prompts) * n
    labels = {"ours": "ours (batched CFG, KV cache)", "hf": "HF generate(guidance_scale)",
              "bare": "bare forward steps (no sampling)"}
    print(f"{'path':<34}{'total s':>10}{'ms/token':>11}{'image tok/s':>13}{'time / ours':>13}")
    for k in cases:
        print(f"{labels[k]:<34}{med[k]:>10.3f}{1000 * med[k] / n:>11.2f}{tokens / med[k]:>13.1f}"
              f"{med[k] / med['ours']:>13.2f}")
    speedup = med["hf"] / med["ours"]
    overhead = med["ours"] / med["bare"]
    print(f"throughput ours / HF generate: {speedup:.2f}x (goal >= 1.5x: {'met' if speedup >= 1.5 else 'NOT met'})")
    print(f"per-token time ours / bare forward step: {overhead:.2f}x "
          f"(goal < 1.2x: {'met' if overhead < 1.2 else 'NOT met'})")
    return 0
