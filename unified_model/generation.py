"""The one sampler: every image and every answer the unified model produces comes out of `decode`.

`decode` runs the LLM step by step with its KV cache (or, for checking, without) and asks a `choose` function for
the next token of every row. On top of it:
- `generate_images`: text-to-image with batched classifier-free guidance. Conditional and unconditional rows share
  one batch (one forward per step, not two); logits are restricted to the code range before guidance, so every
  sampled token is a code and every image decodes. Temperature, top-k, top-p; a guidance schedule (constant, or a
  linear ramp from 1 to the scale over the image); one seed per image.
- `generate_text` / `stream_text` / `stream_chat`: answers, greedy by default, streamed as text pieces.

A model that produces NaN logits, or rules out every allowed token (-inf everywhere), makes the sampler raise
`NonFiniteLogitsError` (a ValueError: the CLI reports it in one line) instead of returning an arbitrary token.

Randomness: each row (image or answer) draws its uniforms from its own `torch.Generator`, seeded with
`seed + row index`, before the loop starts; a token is then picked by inverse-CDF on its probabilities. So an image
depends only on its prompt, settings and seed, not on the batch it was generated in, and the loop itself pays
nothing for per-row seeding.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm import tqdm

from vqrae.data.images import tensor_to_pil

if TYPE_CHECKING:
    from .modeling import UnifiedModel
    from .processing import ImageInput

logger = logging.getLogger(__name__)

CFG_SCHEDULES = ("constant", "linear")

ChooseFn = Callable[[int, torch.Tensor], torch.Tensor]


# ----- validation and sampling primitives -----
class NonFiniteLogitsError(ValueError):
    """The model's logits cannot be sampled from: NaN, or every allowed token at -inf. A broken checkpoint (or an
    overflow in a low-precision dtype), not a sampler setting; argmax / softmax would silently return some token."""


def nonfinite_rows(logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(2, B) bool on the logits' device: the rows of `logits` (B, V) with a NaN, and those with no finite value,
    among `rows` (a (B,) bool mask; default all). No host sync: the image loop checks once, after its last step."""
    flags = torch.stack([torch.isnan(logits).any(-1), ~torch.isfinite(logits).any(-1)])
    return flags if rows is None else flags & rows


def check_logits(flags: torch.Tensor, step: int, what: str) -> None:
    """Raise `NonFiniteLogitsError` for the `nonfinite_rows` flags of step `step`; `what` names the tokens."""
    nan, none = flags.cpu()
    if bool(nan.any()):
        raise NonFiniteLogitsError(f"the model produced NaN logits at step {step} (row {int(nan.nonzero()[0, 0])}) "
                                   f"while sampling a {what}: its weights or activations are broken (a bad "
                                   f"checkpoint, or a dtype overflow)")
    if bool(none.any()):
        raise NonFiniteLogitsError(f"the model gave every allowed {what} a logit of -inf (or no finite logit) at step "
                                   f"{step} (row {int(none.nonzero()[0, 0])}): there is nothing to sample (a bad "
                                   f"checkpoint?)")


def validate_sampling(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      cfg_scale: float | None = None, cfg_schedule: str = "constant") -> None:
    """One clear error per nonsensical value (the CLI prints it and exits 2)."""
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be a non-negative integer (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if cfg_scale is not None and not cfg_scale >= 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {cfg_schedule!r}")


def candidates(logits: torch.Tensor, temperature: float, top_k: int = 0,
               top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature, top-k, then top-p (nucleus) on (B, V) logits.

    Returns the candidates' logits (filtered ones are -inf) and their vocabulary ids, or None when the candidates
    are the whole vocabulary in order. With top-k only the k best are kept (and sorted), so top-p then sorts k
    values, not V: what makes a sampling step cheap next to the forward pass.
    """
    logits = logits / temperature
    index = None
    if 0 < top_k < logits.shape[-1]:
        logits, index = torch.topk(logits, top_k, dim=-1)  # sorted, descending
    if top_p < 1.0:
        if index is None:
            logits, index = torch.sort(logits, dim=-1, descending=True)
        probs = logits.softmax(-1)
        # Drop a token when the tokens before it already hold top_p of the mass; the first is always kept.
        logits = logits.masked_fill((probs.cumsum(-1) - probs) >= top_p, float("-inf"))
    return logits, index


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
           uniforms: torch.Tensor | None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids. Greedy when temperature is 0; otherwise inverse-CDF with one uniform per row."""
    if temperature == 0 or uniforms is None:
        return logits.argmax(-1)
    cand, index = candidates(logits, temperature, top_k, top_p)
    cdf = cand.softmax(-1).cumsum(-1)
    # right=True: the first index whose cdf exceeds u * total, which always has non-zero probability.
    pick = torch.searchsorted(cdf, (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1), right=True)
    pick = pick.clamp_max(cand.shape[-1] - 1)
    return (pick if index is None else index.gather(-1, pick)).squeeze(-1)


def row_uniforms(seeds: Sequence[int], steps: int, device: torch.device) -> torch.Tensor:
    """(rows, steps) uniforms, row r from its own generator seeded with seeds[r]."""
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device)


def guidance_scale_at(step: int, steps: int, cfg_scale: float, schedule: str) -> float:
    if schedule == "linear" and steps > 1:
        return 1.0 + (cfg_scale - 1.0) * step / (steps - 1)
    return cfg_scale


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into (B, L) ids and attention mask, so every row's next token is at the end."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, length - len(r):] = 1
    return ids, mask


# ----- the loop -----
@torch.no_grad()
def decode(
    llm,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    num_steps: int,
    choose: ChooseFn,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the token chosen for every row at each of `num_steps` steps.

    `inputs_embeds` (B, L, h) is the left-padded prompt with `attention_mask` (B, L). `choose(step, logits)` gets
    the last position's float logits (B, V) and returns the (B,) ids to append. The caller may stop iterating at
    any time (a finished answer); no forward pass runs after the last yielded token.
    """
    embed = llm.get_input_embeddings()
    mask = attention_mask.to(inputs_embeds.device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = None
    step_embeds, step_pos = inputs_embeds, positions
    all_embeds = inputs_embeds
    for step in range(num_steps):
        if use_cache:
            out = llm(inputs_embeds=step_embeds, attention_mask=mask, position_ids=step_pos, cache=cache,
                      use_cache=True, logits_to_keep=1)
            cache = out.cache
        else:  # recompute everything: the reference the cached path must match
            out = llm(inputs_embeds=all_embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                      logits_to_keep=1)
        ids = choose(step, out.logits[:, -1].float())
        yield ids
        if step + 1 == num_steps:
            return
        step_embeds = embed(ids.unsqueeze(-1))
        step_pos = positions[:, -1:] + 1
        positions = torch.cat([positions, step_pos], dim=-1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        if not use_cache:
            all_embeds = torch.cat([all_embeds, step_embeds], dim=1)


# ----- images -----
@dataclass
class ImageGenerationOutput:
    codes: torch.Tensor  # (P, num_images, h, w) long, values in [0, K)
    images: list[list[Image.Image]]  # [prompt][image]
    seeds: list[list[int]]  # the seed of every image
    settings: dict = field(default_factory=dict)


def sample_image_codes(
    model: UnifiedModel,
    captions: Sequence[str],
    seeds: Sequence[int],
    cfg_scale: float | None = 4.0,
    cfg_schedule: str = "constant",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    use_cache: bool = True,
) -> torch.Tensor:
    """One image per caption (row r seeded with seeds[r]) -> (B, h*w) codes in [0, K).

    `cfg_scale=None` runs without guidance (no unconditional rows); any number, 1.0 included, runs batched CFG with
    logits cond + (s - 1) * (cond - uncond), which is exactly cond at s = 1.
    """
    proc = model.processor
    rows = [proc.t2i_prompt_ids(c) for c in captions]
    uncond = [proc.t2i_prompt_ids(c, uncond=True) for c in captions] if cfg_scale is not None else None
    return sample_codes(model, rows, uncond, seeds, cfg_scale, cfg_schedule, temperature, top_k, top_p, use_cache)


@torch.no_grad()
def sample_codes(
    model: UnifiedModel,
    rows: Sequence[Sequence[int]],
    uncond_rows: Sequence[Sequence[int]] | None,
    seeds: Sequence[int],
    cfg_scale: float | None = 4.0,
    cfg_schedule: str = "constant",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    use_cache: bool = True,
    pixel_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """The image sampler on given prompts: `rows` end with `<boi>` (a text-to-image request, or a conversation in
    which the model opened an image); `uncond_rows` are their CFG counterparts (None: no guidance). `pixel_values`
    fill the `<image>` slots of `rows`, in reading order. -> (B, h*w) codes in [0, K)."""
    validate_sampling(temperature, top_k, top_p, cfg_scale, cfg_schedule)
    cfg = model.config
    lo, hi = cfg.code_range
    n = cfg.num_image_tokens
    b = len(rows)
    guided = cfg_scale is not None
    if guided and (uncond_rows is None or len(uncond_rows) != b):
        raise ValueError("classifier-free guidance needs one unconditional row per row")
    ids, mask = left_pad(list(rows) + (list(uncond_rows) if guided else []), cfg.pad_token_id)
    device = model.device
    embeds = model.embed(ids.to(device), pixel_values)
    uniforms = row_uniforms(seeds, n, device) if temperature > 0 else None
    broken = torch.zeros(n, 2, b, dtype=torch.bool, device=device)  # nonfinite_rows of each step

    def choose(step: int, logits: torch.Tensor) -> torch.Tensor:
        logits = logits[:, lo:hi]  # only codes can be sampled
        if guided:
            cond, uncond = logits[:b], logits[b:]
            s = guidance_scale_at(step, n, cfg_scale, cfg_schedule)
            logits = cond + (s - 1.0) * (cond - uncond) if s != 1.0 else cond
        broken[step] = nonfinite_rows(logits)  # what is sampled from; checked after the loop (no sync per step)
        tok = sample(logits, temperature, top_k, top_p, None if uniforms is None else uniforms[:, step]) + lo
        return tok.repeat(2) if guided else tok  # both halves continue with the same token

    codes = torch.empty(b, n, dtype=torch.long, device=device)
    for step, tok in enumerate(decode(model.llm, embeds, mask, n, choose, use_cache=use_cache)):
        codes[:, step] = tok[:b] - lo
    bad_steps = broken.flatten(1).any(1).nonzero()
    if len(bad_steps):
        check_logits(broken[int(bad_steps[0, 0])], int(bad_steps[0, 0]), "image code")
    return codes


@torch.no_grad()
def generate_images(
    model: UnifiedModel,
    prompts: Sequence[str],
    num_images: int | None = None,
    cfg_scale: float | None = None,
    cfg_schedule: str | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: bool | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    use_cache: bool = True,
    progress: bool = False,
) -> ImageGenerationOutput:
    """Text-to-image: `num_images` per prompt, `batch_size` images per forward batch (twice the rows with CFG).

    Every sampling argument left as None takes the model's default (`model.sampling_config`, saved with the model
    as sampling_config.json). `guidance=False` samples without classifier-free guidance (no unconditional rows).
    Image i of prompt p gets seed `seed + p * num_images + i` (`seed=None`: a random base seed, reported back).
    """
    defaults = model.sampling_config.replace(num_images=num_images, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule,
                                             temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance)
    num_images = defaults.num_images
    sampling = defaults.image_kwargs()
    cfg_scale, cfg_schedule = sampling["cfg_scale"], sampling["cfg_schedule"]
    temperature, top_k, top_p = sampling["temperature"], sampling["top_k"], sampling["top_p"]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    validate_sampling(temperature, top_k, top_p, cfg_scale, cfg_schedule)
    if seed is None:
        seed = random.randrange(2**31)
    h, w = model.config.grid_size
    items = [(p, i) for p in range(len(prompts)) for i in range(num_images)]
    codes = torch.empty(len(items), h * w, dtype=torch.long)
    bar = tqdm(total=len(prompts), unit="prompt", desc="generating", disable=not progress)
    done_prompts = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        codes[start : start + len(chunk)] = sample_image_codes(
            model, [prompts[p] for p, _ in chunk], [seed + start + j for j in range(len(chunk))],
            cfg_scale, cfg_schedule, temperature, top_k, top_p, use_cache,
        ).cpu()
        finished = (start + len(chunk)) // num_images
        bar.update(finished - done_prompts)
        done_prompts = finished
    bar.close()
    codes = codes.view(len(prompts), num_images, h, w)
    images = [decode_codes(model, codes[p], batch_size) for p in range(len(prompts))]
    seeds = [[seed + p * num_images + i for i in range(num_images)] for p in range(len(prompts))]
    settings = {"num_images": num_images, "cfg_scale": cfg_scale, "cfg_schedule": cfg_schedule, "temperature": temperature,
                    "top_k": top_k, "top_p": top_p, "seed": seed, "uncond": model.config.uncond}
    return ImageGenerationOutput(codes=codes, images=images, seeds=seeds, settings=settings)


@torch.no_grad()
def decode_codes(model: UnifiedModel, codes: torch.Tensor, batch_size: int = 8) -> list[Image.Image]:
    """(B, h, w) codes -> PIL images through the VQRAE decoder."""
    device = next(model.vqrae.parameters()).device
    out = []
    for start in range(0, len(codes), batch_size):
        pixels = model.vqrae.decode(codes[start : start + batch_size].to(device))
        out.extend(tensor_to_pil(p) for p in pixels)
    return out


# ----- text -----
@torch.no_grad()
def iter_text_tokens(
    model: UnifiedModel,
    prompts: Sequence[Sequence[int]],
    pixel_values: torch.Tensor | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
    allow_boi: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield the (B,) next text tokens of a batch of prompts (already expanded, see `encode_conversation`) until
    every row has produced a stop token or `max_new_tokens`; finished rows yield pad ids. `allow_boi`: the model
    may open an image (`<boi>`), which then ends the row's text like a stop token."""
    validate_sampling(temperature, top_k, top_p)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    cfg = model.config
    ids, mask = left_pad(prompts, cfg.pad_token_id)
    device = model.device
    embeds = model.embed(ids.to(device), pixel_values)
    banned = ~model.text_token_mask().to(device)
    stop_ids = list(model.processor.stop_token_ids)
    if allow_boi:
        stop_ids.append(cfg.boi_token_id)
    # A stop token is always allowed: the mask bans pad, and a tokenizer whose pad is its EOS (common for LLMs
    # without a pad token) would otherwise lose the only way to end an answer.
    banned[[i for i in stop_ids if 0 <= i < banned.shape[0]]] = False
    stops = torch.tensor(stop_ids, device=device)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    uniforms = row_uniforms([seed + r for r in range(len(prompts))], max_new_tokens, device) if temperature else None

    def choose(step: int, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.masked_fill(banned[: logits.shape[-1]].to(logits.device), float("-inf"))
        check_logits(nonfinite_rows(logits, ~finished), step, "text token")  # the loop syncs every step anyway
        tok = sample(logits, temperature, top_k, top_p, None if uniforms is None else uniforms[:, step])
        return tok.masked_fill(finished, cfg.pad_token_id)

    for tok in decode(model.llm, embeds, mask, max_new_tokens, choose, use_cache=use_cache):
        yield tok
        finished |= torch.isin(tok, stops)
        if bool(finished.all()):
            return


def generate_text(model: UnifiedModel, prompts: Sequence[Sequence[int]], pixel_values=None,
                  **sampling) -> list[str]:
    """Batched answers (for eval): decoded text of each row, stop token excluded."""
    steps = [t.cpu() for t in iter_text_tokens(model, prompts, pixel_values, **sampling)]
    stops = set(model.processor.stop_token_ids)
    answers = []
    for r in range(len(prompts)):
        row = []
        for t in steps:
            if int(t[r]) in stops:
                break
            row.append(int(t[r]))
        answers.append(model.text_tokenizer.decode(row, skip_special_tokens=True))
    return answers


def _text_segment(model: UnifiedModel, prompt: Sequence[int], pixel_values=None, allow_boi: bool = False,
                  **sampling):
    """Stream text pieces of one answer (a piece is held back while it ends in an incomplete UTF-8 character);
    returns (the token ids, the token that ended it or None)."""
    stops = set(model.processor.stop_token_ids) | ({model.config.boi_token_id} if allow_boi else set())
    tokens: list[int] = []
    sent, ended = "", None
    for tok in iter_text_tokens(model, [prompt], pixel_values, allow_boi=allow_boi, **sampling):
        t = int(tok[0])
        if t in stops:
            ended = t
            break
        tokens.append(t)
        text = model.text_tokenizer.decode(tokens, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= len(sent):
            continue
        yield text[len(sent):]
        sent = text
    text = model.text_tokenizer.decode(tokens, skip_special_tokens=True)
    if len(text) > len(sent):
        yield text[len(sent):]
    return tokens, ended


def stream_text(model: UnifiedModel, prompt: Sequence[int], pixel_values=None, **sampling) -> Iterator[str]:
    """Stream one answer as text pieces."""
    yield from _text_segment(model, prompt, pixel_values, **sampling)


@dataclass
class DrawnImage:
    """An image the model drew in the middle of a reply (it emitted `<boi>`)."""

    image: Image.Image
    codes: torch.Tensor  # (h, w) in [0, K)
    seed: int


def _chat_prompt(model: UnifiedModel, messages: Sequence[dict], images: Sequence[ImageInput],
                 drawings: Sequence = ()):
    """The prompt ids (the images' slots expanded, each `<boi>` followed by its drawing's codes and `<eoi>`) and
    the pixel values of the images."""
    proc = model.processor
    n_slots = proc.count_images(messages)
    if n_slots != len(images):
        raise ValueError(f"the conversation has {n_slots} <image> placeholder(s) but {len(images)} image(s)")
    drawings = list(drawings)
    if any(d is None for d in drawings):
        raise ValueError("a drawing in a prompt needs its codes (None is only for training data, where the model "
                         "tokenizes the image)")
    prompt, _ = proc.encode_conversation(messages, add_generation_prompt=True, drawings=drawings)
    return prompt, proc.pixel_values(images)


def _text_defaults(model: UnifiedModel, sampling: dict) -> dict:
    """The model's defaults (sampling_config.json) for whatever the caller leaves out or sets to None."""
    return {**model.sampling_config.text_kwargs(), **{k: v for k, v in sampling.items() if v is not None}}


def stream_chat(model: UnifiedModel, messages: Sequence[dict], images: Sequence[ImageInput] = (),
                drawings: Sequence = (), **sampling) -> Iterator[str]:
    """The assistant's next reply to `messages`, one image per `<image>` in order and one drawing (h*w codes) per
    `<boi>` in order, streamed as text (the model may not open an image here; `stream_reply` lets it)."""
    prompt, pixel_values = _chat_prompt(model, messages, images, drawings)
    return stream_text(model, prompt, pixel_values, **_text_defaults(model, sampling))


def stream_reply(model: UnifiedModel, messages: Sequence[dict], images: Sequence[ImageInput] = (),
                 draw: dict | None = None, draw_seed: int = 0, max_images: int = 4, drawings: Sequence = (),
                 **sampling) -> Iterator[str | DrawnImage]:
    """The assistant's next reply, in which the model may draw: text pieces, and a `DrawnImage` each time it emits
    `<boi>`. Then the image sampler takes over (codes only, classifier-free guidance against the unconditional
    text-to-image prompt, `draw` settings over the model's sampling defaults), decodes the image, appends `<eoi>`
    and the text goes on. At most `max_images` images per reply; image i is drawn with seed `draw_seed + i`.

    `images` fill the conversation's `<image>`s, `drawings` (h*w codes each) its `<boi>`s, both in order: an
    earlier drawing is in the prompt as `<boi>` + its codes + `<eoi>`, the way the model drew it. To keep a drawing
    in the conversation, write `<boi>` where it was in the reply and add its codes to `drawings`."""
    prompt, pixel_values = _chat_prompt(model, messages, images, drawings)  # bad input fails here, before any token
    text_kw = _text_defaults(model, sampling)
    validate_sampling(**{k: text_kw[k] for k in ("temperature", "top_k", "top_p")})
    image_kw = model.sampling_config.replace(**(draw or {})).image_kwargs()
    return _reply(model, prompt, pixel_values, text_kw, image_kw, draw_seed, max_images)


def _reply(model: UnifiedModel, prompt: list[int], pixel_values, text_kw: dict, image_kw: dict, draw_seed: int,
           max_images: int) -> Iterator[str | DrawnImage]:
    cfg, proc = model.config, model.processor
    lo, _ = cfg.code_range
    h, w = cfg.grid_size
    prefix = list(prompt)
    for i in range(max_images + 1):
        tokens, ended = yield from _text_segment(model, prefix, pixel_values, allow_boi=i < max_images, **text_kw)
        prefix += tokens
        if ended != cfg.boi_token_id:
            return
        prefix.append(cfg.boi_token_id)
        uncond = [proc.t2i_prompt_ids("", uncond=True)] if image_kw["cfg_scale"] is not None else None
        codes = sample_codes(model, [prefix], uncond, [draw_seed + i], pixel_values=pixel_values, **image_kw)[0]
        yield DrawnImage(image=decode_codes(model, codes.view(1, h, w).cpu())[0], codes=codes.view(h, w).cpu(),
                         seed=draw_seed + i)
        prefix += (codes + lo).tolist() + [cfg.eoi_token_id]
