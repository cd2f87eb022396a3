"""UnifiedModel: a Hugging Face causal LM + a VQRAE + a projector, one `PreTrainedModel`, saved as one folder.

    folder/
      config.json               UnifiedConfig: its fields, the LLM's config (text_config), the VQRAE's (vqrae_config)
      model.safetensors         every weight: llm.*, vqrae.*, projector.*
      tokenizer.json ...        the text tokenizer
      preprocessor_config.json  the image processor; processor_config.json: the processor's settings
      sampling_config.json      sampling defaults (guidance scale, temperature, top-k/p, ...)

So `from_pretrained` takes what any Hugging Face model takes: a folder or a hub id, `dtype`, `device_map`, and under
DeepSpeed ZeRO-3 (an `HfDeepSpeedConfig` alive) it builds the model partitioned, never whole on every rank.
`AutoModel.from_pretrained(folder)` and `AutoConfig` load it after `import vqrae`.

Understanding: every `<image>` in a prompt is N image-slot ids; `embed` replaces their embeddings by the
projected continuous VQRAE features (images in the order their slots appear, row by row).
Generation: the LLM predicts `<boi>` + h*w code ids + `<eoi>`; `unified_model.generation` is the only sampler.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from vqrae.tokenizer import VQRAE
from vqrae.tokenizer.hub import check_model_source

from .configuration import UnifiedConfig
from .generation import generate_images, stream_chat, stream_reply
from .loss import token_loss
from .processing import ImageInput, UnifiedProcessor
from .projector import build_projector, calibrate_projector, merge_features
from .sampling_config import SamplingConfig
from .vocab import extend_vocabulary, init_code_embeddings, text_spread

logger = logging.getLogger(__name__)

# Marks, in a training batch's input_ids and labels, the code slots of images the forward pass tokenizes itself.
GEN_SLOT = -2
TRAINING_FILE = "training.json"  # how the model in a folder was trained: one entry per stage (training_history)


@dataclass
class UnifiedOutput(ModelOutput):
    """`forward` with labels: the loss (see `unified_model.loss`) and its parts; `logits` only when asked for."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    image_loss: torch.Tensor | None = None
    text_tokens: int | None = None
    image_tokens: int | None = None


def default_attn_implementation(device: str | torch.device | None = None) -> str:
    """flash_attention_2 when flash-attn is importable and we run on CUDA, else PyTorch SDPA."""
    on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    return "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"


class UnifiedModel(PreTrainedModel):
    config_class = UnifiedConfig
    base_model_prefix = "unified"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: UnifiedConfig, llm: PreTrainedModel | None = None, vqrae: VQRAE | None = None):
        """Builds every part from `config` (what `from_pretrained` does, on the meta device or partitioned under
        ZeRO-3), or takes an existing LLM / VQRAE (what `from_components` does)."""
        super().__init__(config)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.vqrae = vqrae if vqrae is not None else VQRAE(config.vqrae_config)
        self.projector = build_projector(config.projector_type, config.feature_dim, config.hidden_size,
                                         config.feature_merge, config.grid_size)
        # Not weights: the text side and the defaults, attached by from_pretrained / from_components.
        self.processor: UnifiedProcessor | None = None
        self.sampling_config = SamplingConfig(image_tokens=config.num_image_tokens)
        # One entry per training stage this model went through ({"stage", "steps", "tasks", "data", ...}), saved as
        # training.json beside the weights: `vqrae chat` warns about a model that never saw conversations.
        self.training_history: list[dict] = []
        self._text_mask: torch.Tensor | None = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the projector is ours to initialise: the LLM and the VQRAE are PreTrainedModels that initialise
        # themselves (or come pretrained). LLaVA-1.5's mlp2x_gelu projector keeps torch's nn.Linear init, so do we.
        if isinstance(module, (nn.Linear, nn.Conv2d)) and any(module is m for m in self.projector.modules()):
            module.reset_parameters()

    # ----- the text side -----
    @property
    def text_tokenizer(self):
        if self.processor is None:
            raise ValueError("this UnifiedModel has no processor (text tokenizer): load it with from_pretrained or "
                             "build it with from_components")
        return self.processor.tokenizer

    def attach_processor(self, processor: UnifiedProcessor) -> None:
        self.processor = processor
        self._text_mask = None

    # ----- building, saving, loading -----
    @classmethod
    def from_components(
        cls,
        llm,
        text_tokenizer,
        vqrae: VQRAE,
        template: str = "auto",
        projector_type: str = "mlp2x_gelu",
        code_init: str = "projector",
        feature_merge: int = 1,
        **config_kwargs,
    ) -> UnifiedModel:
        """A new unified model: extends the vocabulary, builds the projector, initialises the code embeddings.
        `feature_merge` s: an `<image>` position reads an s x s block of the feature grid (see `projector`)."""
        hidden = llm.get_input_embeddings().weight.shape[1]
        grid = list(vqrae.grid_size)
        from . import templates

        ids = extend_vocabulary(llm, text_tokenizer, templates.resolve_template(template, text_tokenizer),
                                vqrae.config.codebook_size)
        config = UnifiedConfig(
            # A composite config sets its attention implementation on every sub-config, and text_config IS the
            # LLM's config object: hand it the LLM's own, rather than let it be reset.
            attn_implementation={"text_config": llm.config._attn_implementation},
            text_config=llm.config,
            vqrae_config=vqrae.config,
            template=template,
            projector_type=projector_type,
            feature_dim=vqrae.feature_dim,
            hidden_size=hidden,
            num_image_features=grid[0] * grid[1] // (feature_merge * feature_merge),
            feature_merge=feature_merge,
            grid_size=grid,
            code_init=code_init,
            **ids,
            **config_kwargs,
        )
        model = cls(config, llm=llm, vqrae=vqrae)
        weight = llm.get_input_embeddings().weight
        model.projector.to(device=weight.device, dtype=weight.dtype)
        model.attach_processor(UnifiedProcessor.from_model_config(text_tokenizer, config, vqrae.image_size))
        model.init_code_embeddings(code_init)
        return model

    @classmethod
    def from_llm(
        cls,
        llm_name_or_path: str,
        vqrae: VQRAE | str,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
        **kwargs,
    ) -> UnifiedModel:
        """Build from a pretrained LLM (local path or hub id) and a VQRAE (instance, folder or hub id)."""
        tok = AutoTokenizer.from_pretrained(llm_name_or_path)
        llm = AutoModelForCausalLM.from_pretrained(
            llm_name_or_path, dtype=dtype or "auto", device_map=device_map,
            attn_implementation=default_attn_implementation(),
        )
        if not isinstance(vqrae, VQRAE):
            from vqrae.tokenizer import load_vqrae

            vqrae = load_vqrae(vqrae)
        return cls.from_components(llm, tok, vqrae, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """The weights and config (transformers), then the processor and the sampling defaults beside them."""
        if self._has_lora() and kwargs.get("state_dict") is None:
            raise ValueError("the LLM carries LoRA adapters: save with unified_model.lora.save_lora, or merge_lora "
                             "first (a plain save would write keys from_pretrained cannot place)")
        super().save_pretrained(save_directory, **kwargs)
        if kwargs.get("is_main_process", True):
            if self.processor is not None:
                self.processor.save_pretrained(save_directory)
            self.sampling_config.save_pretrained(save_directory)
            with open(os.path.join(save_directory, TRAINING_FILE), "w") as f:
                json.dump(self.training_history, f, indent=2)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args,
                        device: str | torch.device | None = None, **kwargs) -> UnifiedModel:
        """A folder written by `save_pretrained`, or a hub id; the usual transformers keyword arguments (`dtype`,
        `device_map`, `attn_implementation`, ...). `device` moves the whole model there after loading; with
        `device_map` (e.g. "auto"), accelerate places the parts instead."""
        source = check_model_source(pretrained_model_name_or_path, UnifiedConfig.model_type, "unified model")
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs["dtype"] = "auto"
        # The attention kernel is the LLM's choice only (the VQRAE's ViTs use SDPA through their own code).
        impl = kwargs.pop("attn_implementation", None) or default_attn_implementation(device)
        kwargs["attn_implementation"] = impl if isinstance(impl, dict) else {"text_config": impl}
        model = super().from_pretrained(source, *model_args, **kwargs)
        processor = UnifiedProcessor.from_pretrained(source)
        processor.config = model.config  # one config object for model and processor, as from_components builds
        model.attach_processor(processor)
        model.sampling_config = SamplingConfig.from_pretrained(source) or model.sampling_config
        model.training_history = _read_training_history(source)
        if model.sampling_config.image_tokens not in (0, model.config.num_image_tokens):
            raise ValueError(f"{source}: sampling_config.json says {model.sampling_config.image_tokens} image tokens, "
                             f"the model draws {model.config.num_image_tokens}")
        if device is not None and kwargs.get("device_map") is None:
            model.to(device)
        return model.eval()

    def _has_lora(self) -> bool:
        return type(self.llm).__module__.startswith("peft")

    @torch.no_grad()
    def init_code_embeddings(self, mode: str = "projector") -> None:
        """(Re)initialise the code embeddings: `"projector"` = the projected codebook vectors (call again after
        the projector is trained to start generation training from its mapping), `"mean"` = mean init."""
        if self._has_lora():  # peft's token rows would shadow what is written into the base table
            raise ValueError("initialise the code embeddings before add_lora, not after")
        if mode == "projector":
            # a code's row: the projection of a block filled with that code's feature vector
            s = self.config.feature_merge
            vectors = self._project(self.vqrae.code_features().repeat(1, s * s))
        elif mode == "mean":
            vectors = None
        else:
            raise ValueError(f"code init must be 'projector' or 'mean', got {mode!r}")
        init_code_embeddings(self.llm, self.config.code_offset, vectors)
        self.config.code_init = mode

    @torch.no_grad()
    def calibrate_projector(self, vqrae_features: torch.Tensor) -> dict[str, float]:
        """Fold the statistics of (M, N, feature_dim) VQRAE features into the fresh projector (see
        `projector.calibrate_projector`): its outputs start centred, at the text rows' spread, with the images'
        common direction removed; projector-initialised code rows are re-derived from it."""
        radius = text_spread(self.llm.get_input_embeddings().weight[: self.config.code_offset])
        merged = merge_features(vqrae_features.float(), self.config.grid_size, self.config.feature_merge)
        stats = calibrate_projector(self.projector, merged, radius)
        if self.config.code_init == "projector" and not self._has_lora():
            self.init_code_embeddings("projector")
        return stats

    def set_trainable(self, projector: bool = True, llm: bool = True, vqrae: bool = False) -> None:
        """Choose what a training stage updates (align: projector only; SFT / generation: projector + LLM).
        A frozen VQRAE is run under no_grad."""
        if llm and self._has_lora():
            raise ValueError("the LLM carries LoRA adapters: its base stays frozen (set_trainable(llm=False))")
        for module, flag in ((self.projector, projector), (self.llm, llm), (self.vqrae, vqrae)):
            module.requires_grad_(flag)

    def train(self, mode: bool = True):
        """A frozen VQRAE stays in eval mode while the rest trains (its features and codes must not change with the
        mode: the code/feature caches and the sampler see the eval-mode tokenizer)."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.vqrae.parameters()):
            self.vqrae.eval()
        return self

    # ----- embeddings -----
    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) in [0, 1] -> (M, N, hidden): projected continuous features."""
        vq_param = next(self.vqrae.parameters())
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.vqrae.parameters())
        with torch.set_grad_enabled(trainable):
            feats = self.vqrae.encode(pixel_values.to(device=vq_param.device, dtype=vq_param.dtype))
        return self.project_features(feats)

    def project_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(M, gh*gw, feature_dim) VQRAE features -> (M, num_image_features, hidden): merged, then projected."""
        return self._project(merge_features(feats, self.config.grid_size, self.config.feature_merge))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        proj = next(self.projector.parameters())
        return self.projector(x.to(device=proj.device, dtype=proj.dtype))

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None, vqrae_features: torch.Tensor | None = None,
        image_codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the image slots filled by projected features: from `pixel_values`, from
        `vqrae_features` (M, N, feature_dim: the VQRAE's continuous features, e.g. cached while it is frozen), or
        given already projected as `image_features` (M, N, hidden). A model whose `config.image_input` is "codes"
        reads an image as the embeddings of its h*w codes instead (from `pixel_values`, or `image_codes` (M, h*w)
        in [0, K) computed once)."""
        emb = self.llm.get_input_embeddings()
        slots = input_ids == self.config.image_token_id
        embeds = emb(input_ids.clamp_min(0))
        n_slots = int(slots.sum())
        if n_slots == 0:
            if pixel_values is not None and len(pixel_values) > 0:
                raise ValueError(f"{len(pixel_values)} image(s) given but the prompt has no <image>")
            if (self.training and torch.is_grad_enabled() and self.config.image_input == "features"
                    and any(p.requires_grad for p in self.projector.parameters())):
                # A batch without images (text-to-image records) still gives the projector a (zero) gradient: under
                # DDP/ZeRO every process must reduce the same parameters, whatever its batch held (as LLaVA does).
                s = self.config.feature_merge
                dummy = self._project(torch.zeros(1, s * s * self.config.feature_dim))
                embeds = embeds + 0.0 * dummy.sum().to(embeds.dtype)
            return embeds
        if self.config.image_input == "codes" and image_features is None:
            if image_codes is None:
                if pixel_values is None:
                    raise ValueError("the prompt has <image> slots but no images were given")
                with torch.no_grad():
                    vq_param = next(self.vqrae.parameters())
                    image_codes = self.vqrae.tokenize(pixel_values.to(device=vq_param.device, dtype=vq_param.dtype))
            image_features = emb(image_codes.reshape(image_codes.shape[0], -1).to(embeds.device)
                                 + self.config.code_offset)
        if image_features is None and vqrae_features is not None:
            image_features = self.project_features(vqrae_features)
        if image_features is None:
            if pixel_values is None:
                raise ValueError("the prompt has <image> slots but no images were given")
            image_features = self.encode_images(pixel_values)
        if image_features.shape[0] * image_features.shape[1] != n_slots:
            raise ValueError(
                f"prompt has {n_slots // self.config.num_image_features} <image> slot(s) but "
                f"{image_features.shape[0]} image(s) were given"
            )
        feats = image_features.reshape(-1, image_features.shape[-1]).to(device=embeds.device, dtype=embeds.dtype)
        return embeds.masked_scatter(slots.unsqueeze(-1).to(embeds.device), feats)

    # ----- training -----
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        gen_pixel_values: torch.Tensor | None = None,
        vqrae_features: torch.Tensor | None = None,
        image_codes: torch.Tensor | None = None,
        text_weight: float = 1.0,
        image_weight: float = 1.0,
        return_logits: bool = False,
        skipped: torch.Tensor | None = None,
        **kwargs,
    ):
        """Without labels: the LLM's output (logits over the whole extended vocabulary). With labels (a collated
        batch, see `UnifiedCollator`): a `UnifiedOutput` whose loss scores text targets against text rows and code
        targets against code rows, weighted by `text_weight` / `image_weight` (`unified_model.loss`); logits of
        every position only with `return_logits=True`. `gen_pixel_values` are the images of text-to-image records:
        tokenized here into codes that fill the `GEN_SLOT` positions of ids and labels. `skipped` (the collator's
        count of dropped records) is bookkeeping, accepted so a batch can be passed as `model(**batch)`."""
        if gen_pixel_values is not None and len(gen_pixel_values) > 0:
            input_ids, labels = self.fill_generation_slots(input_ids, labels, gen_pixel_values)
        if (input_ids == GEN_SLOT).any():
            raise ValueError("batch has image-code slots but no gen_pixel_values")
        embeds = self.embed(input_ids, pixel_values, vqrae_features=vqrae_features, image_codes=image_codes)
        if labels is None:
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        kwargs.setdefault("use_cache", False)
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)[0]
        head = self.llm.get_output_embeddings()
        parts = token_loss(hidden, labels, head, self.config.code_range, text_weight, image_weight)
        return UnifiedOutput(loss=parts.loss, logits=head(hidden) if return_logits else None,
                             text_loss=parts.text_loss, image_loss=parts.image_loss,
                             text_tokens=parts.text_tokens, image_tokens=parts.image_tokens)

    @torch.no_grad()
    def fill_generation_slots(self, input_ids, labels, gen_pixel_values):
        vq_param = next(self.vqrae.parameters())
        codes = self.vqrae.tokenize(gen_pixel_values.to(device=vq_param.device, dtype=vq_param.dtype))
        codes = codes.reshape(codes.shape[0], -1).to(input_ids.device) + self.config.code_offset
        slots = input_ids == GEN_SLOT
        if int(slots.sum()) != codes.numel():
            raise ValueError(f"batch has {int(slots.sum())} code slots but {codes.numel()} codes were tokenized")
        input_ids = input_ids.masked_scatter(slots, codes)
        if labels is not None:  # a label slot is a target at the same position (codes drawn, not read)
            labels = torch.where(labels == GEN_SLOT, input_ids, labels)
        return input_ids, labels

    # ----- inference (delegates to the one sampler) -----
    def text_token_mask(self) -> torch.Tensor:
        """(V,) bool: ids a text answer may contain (no codes, image specials, pad or unused rows)."""
        if self._text_mask is None:
            vocab = self.llm.get_output_embeddings().weight.shape[0]
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[: len(self.text_tokenizer)] = True
            c = self.config
            for i in (c.image_token_id, c.boi_token_id, c.eoi_token_id, c.uncond_token_id, c.pad_token_id):
                if 0 <= i < vocab:
                    mask[i] = False
            for i in self.processor.stop_token_ids:  # a pad token that is also EOS must still end an answer
                if 0 <= i < vocab:
                    mask[i] = True
            self._text_mask = mask
        return self._text_mask

    def stream_chat(self, messages: Sequence[dict], images: Sequence[ImageInput] = (), **sampling) -> Iterator[str]:
        """Stream the assistant's answer to `messages` (one image per `<image>`, in order) as text pieces."""
        return stream_chat(self, messages, images, **sampling)

    def stream_reply(self, messages: Sequence[dict], images: Sequence[ImageInput] = (), draw: dict | None = None,
                     **kwargs):
        """Like `stream_chat`, but the model may draw: text pieces and a `DrawnImage` whenever it emits `<boi>`
        (see `unified_model.generation.stream_reply`)."""
        return stream_reply(self, messages, images, draw=draw, **kwargs)

    def chat(self, messages: Sequence[dict], images: Sequence[ImageInput] = (), **sampling) -> str:
        return "".join(self.stream_chat(messages, images, **sampling))

    def generate_images(self, prompts: str | Sequence[str], **kwargs):
        """See `unified_model.generation.generate_images`."""
        return generate_images(self, [prompts] if isinstance(prompts, str) else list(prompts), **kwargs)


def _read_training_history(source: str) -> list[dict]:
    """training.json of a folder or hub id ([] for a model saved before the file existed)."""
    path = os.path.join(source, TRAINING_FILE)
    if not os.path.isfile(path):
        if os.path.isdir(source):
            return []
        from transformers.utils import cached_file

        path = cached_file(str(source), TRAINING_FILE, _raise_exceptions_for_missing_entries=False)
        if path is None:
            return []
    try:
        with open(path) as f:
            history = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg})") from None
    if not isinstance(history, list):
        raise ValueError(f"{path}: expected a list of training stages, got {type(history).__name__}")  # noqa: TRY004
    return history


AutoConfig.register(UnifiedConfig.model_type, UnifiedConfig, exist_ok=True)
AutoModel.register(UnifiedConfig, UnifiedModel, exist_ok=True)
