"""UnifiedConfig: what glues an LLM, its text tokenizer, a VQRAE and a projector into one model.

The ids are filled in when the vocabulary is extended (`unified_model.vocab.extend_vocabulary`) and saved with the
model, so loading never re-derives them from the tokenizer.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .projector import PROJECTOR_TYPES

UNCOND_MODES = ("empty", "pad", "learned")
CODE_INITS = ("projector", "mean")


class UnifiedConfig(PretrainedConfig):
    r"""
    Args:
        template: conversation template name (see `unified_model.templates`), chosen explicitly, never guessed.
        projector_type: `"mlp2x_gelu"` or `"linear"`.
        feature_dim: width of the VQRAE continuous features (the projector's input).
        hidden_size: the LLM's embedding width (the projector's output).
        num_image_features: N, how many feature vectors one `<image>` expands to.
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
    """

    model_type = "vqrae_unified"

    def __init__(
        self,
        template: str = "chatml",
        projector_type: str = "mlp2x_gelu",
        feature_dim: int = 0,
        hidden_size: int = 0,
        num_image_features: int = 0,
        grid_size: list[int] | tuple[int, int] = (0, 0),
        codebook_size: int = 0,
        code_offset: int = 0,
        image_token_id: int = -1,
        boi_token_id: int = -1,
        eoi_token_id: int = -1,
        uncond_token_id: int = -1,
        pad_token_id: int = -1,
        t2i_prompt: str = "Generate an image of: {caption}",
        uncond: str = "empty",
        code_init: str = "projector",
        **kwargs,
    ):
        if projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {projector_type!r}")
        if uncond not in UNCOND_MODES:
            raise ValueError(f"uncond must be one of {UNCOND_MODES}, got {uncond!r}")
        if code_init not in CODE_INITS:
            raise ValueError(f"code_init must be one of {CODE_INITS}, got {code_init!r}")
        if "{caption}" not in t2i_prompt:
            raise ValueError(f"t2i_prompt must contain '{{caption}}', got {t2i_prompt!r}")
        self.template = template
        self.projector_type = projector_type
        self.feature_dim = feature_dim
        self.hidden_size = hidden_size
        self.num_image_features = num_image_features
        self.grid_size = [int(x) for x in grid_size]
        self.codebook_size = codebook_size
        self.code_offset = code_offset
        self.image_token_id = image_token_id
        self.boi_token_id = boi_token_id
        self.eoi_token_id = eoi_token_id
        self.uncond_token_id = uncond_token_id
        self.t2i_prompt = t2i_prompt
        self.uncond = uncond
        self.code_init = code_init
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def num_image_tokens(self) -> int:
        """h * w: codes per generated image."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def code_range(self) -> tuple[int, int]:
        """[start, end) of the code ids in the LLM vocabulary."""
        return self.code_offset, self.code_offset + self.codebook_size
