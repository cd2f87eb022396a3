"""What a text LM reads from a scene's description: the VQA questions of held-out ShapesWorld scenes asked after
the scene's fullest caption (every object's colour, shape and place), in the LM's chat template, answered greedily.

    python -m vqrae.eval.lm_lookup runs/qs/lm/final          # a stand-in LM from `vqrae train lm-pretrain`
    python -m vqrae.eval.lm_lookup /models/Qwen3-0.6B        # or any local causal LM with a chat template

The unified model answers from image features that stand where such a description stands, so an LM that cannot
answer "What color is the cross?" after "a pink cross on a plain background" will not learn to read it from an image
either. A type that scores as well with the scene left out (`--no-scene`) is answered from the language prior.
"""

from __future__ import annotations

import argparse
import collections

import torch


def lookup_prompts(num_scenes: int, scene: bool = True, seed: int = 0, split: str = "test",
                   scene_context: str = "caption") -> list[dict]:
    """One record per open question (multiple choice left out): its `messages`, `answer` and `type`."""
    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig
    from vqrae.data.shapes_text import SHORT_ANSWER, scene_description

    data = ShapesDataset(num_scenes, ShapesConfig(size=64), seed=seed, split=split, size=64)
    out = []
    for i in range(num_scenes):
        item = data[i]
        context = f"{scene_description(item, scene_context)}\n" if scene else ""
        for qa in item["record"]["vqa"]:
            if qa["type"] == "mc":
                continue
            out.append({"messages": [{"role": "user", "content": f"{context}{qa['question']}\n{SHORT_ANSWER}"}],
                        "answer": qa["answer"], "type": qa["type"]})
    return out


def score(replies: list[str], prompts: list[dict]) -> dict[str, float]:
    """Exact-match accuracy per question type (the reply lower-cased, a final full stop dropped), and overall."""
    right, total = collections.Counter(), collections.Counter()
    for reply, p in zip(replies, prompts, strict=True):
        total[p["type"]] += 1
        right[p["type"]] += reply.strip().lower().rstrip(".") == p["answer"].lower()
    out = {t: right[t] / total[t] for t in sorted(total)}
    out["overall"] = sum(right.values()) / max(1, sum(total.values()))
    return out


def _until_special(ids: list[int], special: set[int]) -> list[int]:
    """The reply: the generated ids up to the first special token (EOS, or the chat template's end of turn, which
    `generate` does not stop at when the folder's EOS is another token)."""
    return ids[:next((i for i, t in enumerate(ids) if t in special), len(ids))]


@torch.no_grad()
def lm_lookup(folder: str, num_scenes: int = 60, scene: bool = True, max_new_tokens: int = 4,
              scene_context: str = "caption") -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = lookup_prompts(num_scenes, scene, scene_context=scene_context)
    replies, special = [], set(tok.all_special_ids)
    for p in prompts:
        ids = tok.apply_chat_template(p["messages"], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        out = lm.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                          pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        replies.append(tok.decode(_until_special(out[0, ids.shape[1]:].tolist(), special)))
    return score(replies, prompts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqrae.eval.lm_lookup", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a causal LM folder with a chat template")
    parser.add_argument("--scenes", type=int, default=60, help="held-out scenes (default 60, ~5 questions each)")
    parser.add_argument("--no-scene", action="store_true", help="ask without the description: the language prior")
    from vqrae.data.shapes_text import SCENE_STYLES

    parser.add_argument("--scene-context", default="caption", choices=SCENE_STYLES,
                        help="how the scene is described, as lm-pretrain's `scene_context` (default caption)")
    args = parser.parse_args(argv)
    result = lm_lookup(args.folder, args.scenes, scene=not args.no_scene, scene_context=args.scene_context)
    print(" ".join(f"{k}={v:.2f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
