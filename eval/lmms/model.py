"""The lmms-eval model adapter: `lmms-eval --model vqrae --model_args pretrained=DIR[,device=cuda,batch_size=8]`.

A "simple" lmms-eval model: each request carries the task's prompt text, its generation settings and a
`doc_to_visual` that gives the document's images. The prompt becomes one user turn of the model's own chat
template with one `<image>` per image (placed first, LLaVA style, unless the prompt already holds exactly one
`<image>` per image, as MMMU's does), then:
- `generate_until`: batched answers from the one sampler (`vqrae.unified_model.generation.generate_text`), greedy
  unless the task asks for sampling, cut at the task's `until` strings;
- `loglikelihood`: the summed log-probability of the continuation as the assistant's answer (leading whitespace
  dropped: chat answers start without one) and whether greedy decoding would produce it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model
from PIL import Image
from tqdm import tqdm

from vqrae.data.records import IMAGE_TOKEN
from vqrae.eval.lmms import MODEL_CLASS_PATH, MODEL_NAME
from vqrae.unified_model.generation import generate_text

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128  # when a task sets no max_new_tokens (e.g. textvqa: `until` only)


def _flatten(visuals) -> list:
    out = []
    for v in visuals if isinstance(visuals, (list, tuple)) else [visuals]:
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


@register_model(MODEL_NAME)
class VQRAELmms(lmms):
    """`pretrained`: a UnifiedModel folder (or pass `model=` an already loaded `UnifiedModel`, in process)."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, model=None, device: str | None = None,
                 dtype: str | None = None, batch_size: int | str | None = 1, max_new_tokens: int | str | None = None,
                 use_cache: bool | str = True, **kwargs) -> None:
        super().__init__()
        if kwargs:
            logger.warning("vqrae adapter: ignoring unknown model_args %s", sorted(kwargs))
        if model is None:
            if not pretrained:
                raise ValueError("the vqrae lmms-eval model needs model_args pretrained=<UnifiedModel folder>")
            from vqrae.unified_model import UnifiedModel

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            if dtype in (None, "", "None"):
                # bf16 is many times slower than fp32 on CPUs; on GPUs keep the saved dtype.
                dtype = "float32" if str(device).startswith("cpu") else "auto"
            model = UnifiedModel.from_pretrained(pretrained, device=device,
                                                 dtype=dtype if dtype == "auto" else getattr(torch, dtype))
        self.model = model.eval()
        self.processor = model.processor
        self.batch_size = max(1, int(batch_size or 1))
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens not in (None, "", "None") else None
        self.use_cache = _as_bool(use_cache)
        self.stats = {"generate_requests": 0, "generate_seconds": 0.0, "loglikelihood_requests": 0,
                      "loglikelihood_seconds": 0.0}

    # ----- prompts -----
    def _visuals(self, doc_to_visual, doc_id, task, split) -> list[Image.Image]:
        if doc_to_visual is None:
            return []
        images = _flatten(doc_to_visual(self.task_dict[task][split][doc_id]))
        for im in images:
            if not isinstance(im, Image.Image):
                raise TypeError(f"vqrae adapter: task {task!r} gives a {type(im).__name__} visual; only images are "
                                 "supported (no video or audio)")
        return [im.convert("RGB") for im in images]

    def prompt_ids(self, context: str, n_images: int) -> list[int]:
        """The token ids of `context` as one user turn with `n_images` images, ending with the answer's start."""
        context = str(context)
        if context.count(IMAGE_TOKEN) != n_images:
            context = context.replace(IMAGE_TOKEN, "").strip()
            context = f"{IMAGE_TOKEN}\n" * n_images + context
        ids, _ = self.processor.encode_conversation([{"role": "user", "content": context}],
                                                    add_generation_prompt=True)
        return ids

    # ----- lmms API -----
    def generate_until(self, requests: list[Instance]) -> list[str]:
        start = time.perf_counter()
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted((req.args[1] or {}).items(), key=str)), []).append(i)
        bar = tqdm(total=len(requests), desc="vqrae answering", disable=self.rank != 0)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1] or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else [u for u in until if u]
            sampling = self._sampling(gen_kwargs)
            prepared = []
            for i in indices:
                context, _, doc_to_visual, doc_id, task, split = requests[i].args[:6]
                images = self._visuals(doc_to_visual, doc_id, task, split)
                prepared.append((i, self.prompt_ids(context, len(images)), images))
            prepared.sort(key=lambda p: -len(p[1]))  # similar lengths share a batch: less padding
            for b in range(0, len(prepared), self.batch_size):
                chunk = prepared[b : b + self.batch_size]
                images = [im for _, _, ims in chunk for im in ims]
                answers = generate_text(self.model, [ids for _, ids, _ in chunk],
                                        self.processor.pixel_values(images), use_cache=self.use_cache, **sampling)
                for (i, _, _), answer in zip(chunk, answers):
                    for stop in until:
                        answer = answer.split(stop)[0]
                    out[i] = answer.strip()
                bar.update(len(chunk))
        bar.close()
        self.stats["generate_requests"] += len(requests)
        self.stats["generate_seconds"] += time.perf_counter() - start
        return out

    def _sampling(self, gen_kwargs: dict) -> dict:
        max_new = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        if self.max_new_tokens is not None:
            max_new = min(max_new, self.max_new_tokens)
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        if not _as_bool(gen_kwargs.get("do_sample", temperature > 0)):
            temperature = 0.0
        top_p = gen_kwargs.get("top_p")
        return {"max_new_tokens": max_new, "temperature": temperature,
                "top_p": float(top_p) if top_p not in (None, 0) and temperature > 0 else 1.0}

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        start = time.perf_counter()
        res = []
        for req in tqdm(requests, desc="vqrae log-likelihood", disable=self.rank != 0):
            context, target, doc_to_visual, doc_id, task, split = req.args[:6]
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            if isinstance(continuation, (list, tuple)):
                continuation = continuation[0]
            images = self._visuals(doc_to_visual, doc_id, task, split)
            res.append(self.continuation_logprob(self.prompt_ids(context, len(images)), str(continuation), images))
        self.stats["loglikelihood_requests"] += len(requests)
        self.stats["loglikelihood_seconds"] += time.perf_counter() - start
        return res

    @torch.no_grad()
    def continuation_logprob(self, prompt: Sequence[int], continuation: str,
                             images: Sequence[Image.Image] = ()) -> tuple[float, bool]:
        """(sum of log p(continuation token | everything before), whether each is the argmax)."""
        cont = self.processor.tokenize(continuation.lstrip())
        if not cont:
            return 0.0, True
        ids = torch.tensor([list(prompt) + cont], device=self.model.device)
        pixel_values = self.processor.pixel_values(list(images))
        logits = self.model(input_ids=ids, pixel_values=pixel_values, attention_mask=torch.ones_like(ids)).logits
        logits = logits[0, len(prompt) - 1 : len(prompt) - 1 + len(cont)].float()
        # Over the ids a text answer may hold, as the sampler decodes and the training loss scores text (never an
        # image code): "is greedy" then means exactly what generate_until would have produced.
        allowed = self.model.text_token_mask().to(logits.device)
        logits = logits[:, : allowed.shape[0]].masked_fill(~allowed, float("-inf"))
        logprobs = logits.log_softmax(-1)
        target = torch.tensor(cont, device=logprobs.device)
        total = float(logprobs.gather(-1, target[:, None]).sum())
        return total, bool((logprobs.argmax(-1) == target).all())

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the vqrae adapter answers single-round tasks (generate_until, loglikelihood)")


def _register_in_process() -> None:
    """Also make `vqrae` resolvable by lmms-eval's model registry when the package was not installed with its entry
    point (e.g. running from a checkout): the registry reads entry points once, when lmms_eval.models is imported."""
    try:
        from lmms_eval.models import MODEL_REGISTRY_V2
        from lmms_eval.models.registry_v2 import ModelManifest

        MODEL_REGISTRY_V2.register_manifest(ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH),
                                            overwrite=True)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:  # another lmms-eval layout: entry point only
        logger.debug("could not register %s in lmms-eval's registry: %s", MODEL_NAME, exc)


_register_in_process()
