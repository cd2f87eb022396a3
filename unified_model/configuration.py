"""UnifiedConfig: what glues an LLM, its text tokenizer, a VQRAE and a projector into one model.

Like transformers' LLaVA port, the config holds its parts' configs (`text_config`: the LLM's, any causal LM that
`AutoModelForCausalLM` knows; `vqrae_config`: the tokenizer's), so `UnifiedModel(config)` builds the whole model and
one `config.json` describes it. The ids are filled in when the vocabulary is extended
(`unified_model.vocab.extend_vocabulary`) and saved with the model, so loading never re-derives them.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from vqrae.tokenizer import VQRAEConfig

from .projector import PROJECTOR_TYPES

UNCOND_MODES = ("empty", "pad", "learned")
CODE_INITS = ("projector", "mean")
IMAGE_INPUTS = ("features", "codes")


class UnifiedConfig(PreTrainedConfig):
    r"""
    Args:
        text_config: the LLM's config (a dict with `model_type`, or a config object); default a Qwen2 config.
        vqrae_config: the VQRAE tokenizer's config (`VQRAEConfig` or its dict).
        template: conversation template: `"auto"` (the text tokenizer's own chat template when it has one, else our
            `plain` template) or a name from `unified_model.templates`.
        projector_type: `"mlp2x_gelu"`, `"linear"` or `"conv_mlp"` (3x3 convolutions over the grid between the
            two Linears, so each position sees its neighbours: `projector.ConvProjector`).
        feature_dim: width of the VQRAE continuous features (the projector's input).
        hidden_size: the LLM's embedding width (the projector's output).
        num_image_features: N, how many LLM positions one `<image>` expands to: the feature grid's size divided by
            `feature_merge` squared.
        feature_merge: s, the side of the block of feature vectors that one `<image>` position reads (1: one vector
            per position, LLaVA; 2: 2 x 2 vectors concatenated, InternVL / Qwen2-VL).
        grid_size: (h, w) of an image's code grid; an image to generate is `<boi>` + h*w codes + `<eoi>`.
        codebook_size: K, the number of image codes.
        code_offset: LLM id of code 0; code k is `code_offset + k`. Codes live past the text tokenizer's ids, so
            they are never produced by tokenizing text.
        image_token_id, boi_token_id, eoi_token_id, uncond_token_id, pad_token_id: special token ids.
        t2i_prompt: the user turn of a text-to-image request; `{caption}` is replaced by the caption.
        uncond: the unconditional prompt for classifier-free guidance, used by both caption dropout in training and
            the sampler: `"empty"` (the t2i prompt with an empty caption), `"pad"` (caption tokens replaced by pad
            tokens, LlamaGen-style) or `"learned"` (the caption replaced by one learned `<uncond>` token).
        code_init: how the code embeddings were initialised (`"projector"`: projected codebook vectors; `"mean"`).
        image_input: what fills an `<image>`'s slots when the model reads an image: `"features"` (the VQRAE's
            continuous features through the projector: the paper's design) or `"codes"` (the embeddings of the
            image's discrete codes, the ones it draws with: the `vqrae ablate understanding-input` baseline).
    """

    model_type = "vqrae_unified"
    sub_configs_defaults = {  # noqa: RUF012 (transformers' class-level spec)
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "vqrae_config": SubConfigSpec(config_class=VQRAEConfig),
    }

    text_config: dict | PreTrainedConfig | None = None
    vqrae_config: dict | PreTrainedConfig | None = None
    template: str = "auto"
    projector_type: str = "mlp2x_gelu"
    feature_dim: int = 0
    hidden_size: int = 0
    num_image_features: int = 0
    feature_merge: int = 1
    grid_size: list[int] | tuple[int, ...] = (0, 0)
    codebook_size: int = 0
    code_offset: int = 0
    image_token_id: int = -1
    boi_token_id: int = -1
    eoi_token_id: int = -1
    uncond_token_id: int = -1
    pad_token_id: int = -1
    t2i_prompt: str = "Generate an image of: {caption}"
    uncond: str = "empty"
    code_init: str = "projector"
    image_input: str = "features"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}")
        if self.uncond not in UNCOND_MODES:
            raise ValueError(f"uncond must be one of {UNCOND_MODES}, got {self.uncond!r}")
        if self.image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {IMAGE_INPUTS}, got {self.image_input!r}")
        if self.code_init not in CODE_INITS:
            raise ValueError(f"code_init must be one of {CODE_INITS}, got {self.code_init!r}")
        if self.feature_merge < 1:
            raise ValueError(f"feature_merge must be >= 1, got {self.feature_merge}")
        if self.image_input == "codes" and self.feature_merge != 1:
            raise ValueError("image_input 'codes' reads one position per code: it needs feature_merge 1, got "
                             f"{self.feature_merge}")
        if "{caption}" not in self.t2i_prompt:
            raise ValueError(f"t2i_prompt must contain '{{caption}}', got {self.t2i_prompt!r}")
        self.grid_size = [int(x) for x in self.grid_size]
        if len(self.grid_size) != 2:
            raise ValueError(f"grid_size must be (h, w), got {self.grid_size}")
        if any(g % self.feature_merge for g in self.grid_size):
            raise ValueError(f"feature_merge {self.feature_merge} must divide the grid {self.grid_size}")
        # The LLM decides whether its input and output embeddings are one tensor (LLaVA does the same).
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def num_image_tokens(self) -> int:
        """h * w: codes per generated image."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def code_range(self) -> tuple[int, int]:
        """[start, end) of the code ids in the LLM vocabulary."""
        return self.code_offset, self.code_offset + self.codebook_size
