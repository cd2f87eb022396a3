"""In-process ShapesWorld VQA accuracy of a unified model: the numbers the training stages, the ablations and the
quickstart print without a round trip through lmms-eval.

Same questions, prompts and scoring as the `shapesworld_vqa` lmms-eval task (`vqrae eval understanding`): each
question of a held-out image is asked on its own (`<image>` + question + the LLaVA answer suffix), answered greedily,
and scored by `eval.lmms.shapes_vqa` (count, colour, shape, existence with POPE precision / recall / F1, position,
multiple choice, overall).

    from vqrae.eval.shapes_quick import shapes_vqa_metrics
    metrics = shapes_vqa_metrics(model, num_images=100)     # {"overall_acc": ..., "count_acc": ..., ...}
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from vqrae.data.records import IMAGE_TOKEN

from .lmms.shapes_vqa import all_metrics, doc_to_text, score_record


def vqa_questions(num_images: int, image_size: int, split: str = "test", seed: int = 0) -> list[dict]:
    """One dict per question of the first `num_images` images of a ShapesWorld split: the question record plus the
    image's pixels (3, S, S)."""
    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig

    data = ShapesDataset(num_images, ShapesConfig(size=image_size), seed=seed, split=split, size=image_size)
    docs = []
    for i in range(len(data)):
        item = data[i]
        for k, qa in enumerate(item["record"]["vqa"]):
            docs.append({**qa, "question_id": f"{item['id']}-{k}", "pixels": item["pixels"]})
    return docs


@torch.no_grad()
def answer_questions(model, docs: list[dict], batch_size: int = 32, max_new_tokens: int = 8,
                     progress: bool = False) -> list[str]:
    """Greedy answers, batched (the sampler left-pads the prompts)."""
    from vqrae.unified_model.generation import generate_text

    proc = model.processor
    answers: list[str] = []
    for start in tqdm(range(0, len(docs), batch_size), desc="VQA", unit="batch", disable=not progress):
        chunk = docs[start : start + batch_size]
        prompts = [proc.encode_conversation([{"role": "user", "content": f"{IMAGE_TOKEN}\n{doc_to_text(d)}"}],
                                            add_generation_prompt=True)[0] for d in chunk]
        pixels = torch.stack([d["pixels"] for d in chunk]).to(model.device)
        answers += generate_text(model, prompts, pixels, max_new_tokens=max_new_tokens, temperature=0.0)
    return answers


def shuffle_images(docs: list[dict], seed: int = 0) -> list[dict]:
    """The same questions, each asked about another image (a fixed derangement of the images, so no question keeps
    its own): the control that shows which answers come from the image and which from the language prior alone."""
    images = {}  # image id -> pixels, in first-seen order
    for d in docs:
        images.setdefault(d["question_id"].rsplit("-", 1)[0], d["pixels"])
    keys = list(images)
    if len(keys) < 2:
        return list(docs)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed)).tolist()
    # a cyclic shift of a random order: a derangement
    swap = {keys[order[i]]: images[keys[order[(i + 1) % len(order)]]] for i in range(len(order))}
    return [{**d, "pixels": swap[d["question_id"].rsplit("-", 1)[0]]} for d in docs]


def shapes_vqa_metrics(model, num_images: int = 100, split: str = "test", seed: int = 0, batch_size: int = 32,
                       progress: bool = False, shuffled_images: bool = False) -> dict[str, float]:
    """Accuracy per question type (and POPE precision / recall / F1) on `num_images` held-out images.
    `shuffled_images`: ask each question about another question's image instead (see `shuffle_images`)."""
    docs = vqa_questions(num_images, model.processor.image_size, split, seed)
    if shuffled_images:
        docs = shuffle_images(docs, seed)
    answers = answer_questions(model, docs, batch_size, progress=progress)
    scored = [score_record(d, a) for d, a in zip(docs, answers)]
    return {**all_metrics(scored), "questions": float(len(scored))}
