"""UnifiedModel: a Hugging Face causal LM + its text tokenizer + a VQRAE + a projector, saved as one folder.

    folder/
      config.json               UnifiedConfig (template, ids, grid size, ...)
      llm/                      the causal LM (save_pretrained) and its text tokenizer
      vqrae/                    the VQRAE tokenizer (save_pretrained)
      projector.safetensors     the projector's weights

Understanding: every `<image>` in a prompt is N image-slot ids; `embed` replaces their embeddings by the
projected continuous VQRAE features (images in the order their slots appear, row by row).
Generation: the LLM predicts `<boi>` + h*w code ids + `<eoi>`; `unified_model.generation` is the only sampler.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from vqrae.tokenizer import VQRAE

from .configuration import UnifiedConfig
from .generation import generate_images, stream_chat
from .processing import ImageInput, UnifiedProcessor
from .projector import build_projector
from .templates import get_template
from .vocab import extend_vocabulary, init_code_embeddings

logger = logging.getLogger(__name__)

# Marks, in a training batch's input_ids and labels, the code slots of images the forward pass tokenizes itself.
GEN_SLOT = -2

CONFIG_NAME = "config.json"
PROJECTOR_NAME = "projector.safetensors"


def default_attn_implementation(device: str | torch.device | None = None) -> str:
    """flash_attention_2 when flash-attn is importable and we run on CUDA, else PyTorch SDPA."""
    on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    return "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"


class UnifiedModel(nn.Module):
    def __init__(self, config: UnifiedConfig, llm, text_tokenizer, vqrae: VQRAE, projector: nn.Module):
        super().__init__()
        self.config = config
        self.llm = llm
        self.vqrae = vqrae
        self.projector = projector
        self.text_tokenizer = text_tokenizer
        self.processor = UnifiedProcessor(text_tokenizer, config, vqrae.image_size)
        self._text_mask: torch.Tensor | None = None

    # ----- building, saving, loading -----
    @classmethod
    def from_components(
        cls,
        llm,
        text_tokenizer,
        vqrae: VQRAE,
        template: str = "chatml",
        projector_type: str = "mlp2x_gelu",
        code_init: str = "projector",
        **config_kwargs,
    ) -> UnifiedModel:
        """A new unified model: extends the vocabulary, builds the projector, initialises the code embeddings."""
        hidden = llm.get_input_embeddings().weight.shape[1]
        grid = list(vqrae.grid_size)
        config = UnifiedConfig(
            template=template,
            projector_type=projector_type,
            feature_dim=vqrae.feature_dim,
            hidden_size=hidden,
            num_image_features=grid[0] * grid[1],
            grid_size=grid,
            code_init=code_init,
            **config_kwargs,
        )
        ids = extend_vocabulary(llm, text_tokenizer, get_template(template), vqrae.config.codebook_size)
        for k, v in ids.items():
            setattr(config, k, v)
        projector = build_projector(projector_type, vqrae.feature_dim, hidden)
        weight = llm.get_input_embeddings().weight
        projector.to(device=weight.device, dtype=weight.dtype)
        model = cls(config, llm, text_tokenizer, vqrae, projector)
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
        """Build from a pretrained LLM (local path or hub id) and a VQRAE (instance or folder)."""
        tok = AutoTokenizer.from_pretrained(llm_name_or_path)
        llm = AutoModelForCausalLM.from_pretrained(
            llm_name_or_path, dtype=dtype or "auto", device_map=device_map,
            attn_implementation=default_attn_implementation(),
        )
        if isinstance(vqrae, (str, Path)):
            vqrae = VQRAE.from_pretrained(vqrae)
        return cls.from_components(llm, tok, vqrae, **kwargs)

    def save_pretrained(self, save_directory: str | Path) -> None:
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.llm.save_pretrained(out / "llm")
        self.text_tokenizer.save_pretrained(out / "llm")
        self.vqrae.save_pretrained(out / "vqrae")
        state = {k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()}
        save_file(state, str(out / PROJECTOR_NAME))
        self.config.save_pretrained(out)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
    ) -> UnifiedModel:
        """Load a folder written by `save_pretrained`. `device_map="auto"` spreads (and offloads) the LLM with
        accelerate; the VQRAE and projector then sit on the device of the LLM's input embeddings."""
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"model folder not found: {root}")
        for rel in (CONFIG_NAME, "llm/config.json", "vqrae/config.json", PROJECTOR_NAME):
            if not (root / rel).is_file():
                raise FileNotFoundError(f"model folder {root} is missing {rel}")
        config = UnifiedConfig.from_pretrained(root)
        tok = AutoTokenizer.from_pretrained(root / "llm")
        llm = AutoModelForCausalLM.from_pretrained(
            root / "llm", dtype=dtype or "auto", device_map=device_map,
            attn_implementation=default_attn_implementation(device),
        )
        vq = VQRAE.from_pretrained(root / "vqrae")
        projector = build_projector(config.projector_type, config.feature_dim, config.hidden_size)
        projector.load_state_dict(load_file(str(root / PROJECTOR_NAME)))
        model = cls(config, llm, tok, vq, projector)
        if device_map is None and device is not None:
            model.to(device)
        else:
            target = llm.get_input_embeddings().weight.device
            vq.to(target)
            projector.to(target)
        projector.to(dtype=llm.get_input_embeddings().weight.dtype)
        return model.eval()

    @torch.no_grad()
    def init_code_embeddings(self, mode: str = "projector") -> None:
        """(Re)initialise the code embeddings: `"projector"` = the projected codebook vectors (call again after
        the projector is trained to start generation training from its mapping), `"mean"` = mean init."""
        if mode == "projector":
            device = next(self.projector.parameters()).device
            feats = self.vqrae.code_features().to(device)
            vectors = self.projector(feats.to(next(self.projector.parameters()).dtype))
        elif mode == "mean":
            vectors = None
        else:
            raise ValueError(f"code init must be 'projector' or 'mean', got {mode!r}")
        init_code_embeddings(self.llm, self.config.code_offset, vectors)
        self.config.code_init = mode

    def set_trainable(self, projector: bool = True, llm: bool = True, vqrae: bool = False) -> None:
        """Choose what a training stage updates (align: projector only; SFT / generation: projector + LLM).
        A frozen VQRAE is run under no_grad."""
        for module, flag in ((self.projector, projector), (self.llm, llm), (self.vqrae, vqrae)):
            module.requires_grad_(flag)

    # ----- embeddings -----
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) in [0, 1] -> (M, N, hidden): projected continuous features."""
        vq_param = next(self.vqrae.parameters())
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.vqrae.parameters())
        with torch.set_grad_enabled(trainable):
            feats = self.vqrae.encode(pixel_values.to(device=vq_param.device, dtype=vq_param.dtype))
        proj = next(self.projector.parameters())
        return self.projector(feats.to(device=proj.device, dtype=proj.dtype))

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the image slots filled by projected features (from `pixel_values`, or given)."""
        emb = self.llm.get_input_embeddings()
        slots = input_ids == self.config.image_token_id
        embeds = emb(input_ids.clamp_min(0))
        n_slots = int(slots.sum())
        if n_slots == 0:
            if pixel_values is not None and len(pixel_values) > 0:
                raise ValueError(f"{len(pixel_values)} image(s) given but the prompt has no <image>")
            return embeds
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
        **kwargs,
    ):
        """Next-token loss on a collated batch (see `UnifiedCollator`). `gen_pixel_values` are the images of
        text-to-image records: tokenized here into codes that fill the `GEN_SLOT` positions of ids and labels."""
        if gen_pixel_values is not None and len(gen_pixel_values) > 0:
            input_ids, labels = self.fill_generation_slots(input_ids, labels, gen_pixel_values)
        if (input_ids == GEN_SLOT).any():
            raise ValueError("batch has image-code slots but no gen_pixel_values")
        embeds = self.embed(input_ids, pixel_values)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def fill_generation_slots(self, input_ids, labels, gen_pixel_values):
        vq_param = next(self.vqrae.parameters())
        codes = self.vqrae.tokenize(gen_pixel_values.to(device=vq_param.device, dtype=vq_param.dtype))
        codes = codes.reshape(codes.shape[0], -1).to(input_ids.device) + self.config.code_offset
        slots = input_ids == GEN_SLOT
        if int(slots.sum()) != codes.numel():
            raise ValueError(f"batch has {int(slots.sum())} code slots but {codes.numel()} codes were tokenized")
        input_ids = input_ids.masked_scatter(slots, codes)
        if labels is not None:
            labels = labels.masked_scatter(labels == GEN_SLOT, codes)
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
            self._text_mask = mask
        return self._text_mask

    def stream_chat(self, messages: Sequence[dict], images: Sequence[ImageInput] = (), **sampling) -> Iterator[str]:
        """Stream the assistant's answer to `messages` (one image per `<image>`, in order) as text pieces."""
        return stream_chat(self, messages, images, **sampling)

    def chat(self, messages: Sequence[dict], images: Sequence[ImageInput] = (), **sampling) -> str:
        return "".join(self.stream_chat(messages, images, **sampling))

    def generate_images(self, prompts: str | Sequence[str], **kwargs):
        """See `unified_model.generation.generate_images`."""
        return generate_images(self, [prompts] if isinstance(prompts, str) else list(prompts), **kwargs)
