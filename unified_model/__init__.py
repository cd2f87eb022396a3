"""The unified multimodal model: an LLM that reads VQRAE features and writes VQRAE codes.

    from vqrae.unified_model import UnifiedModel
    um = UnifiedModel.from_pretrained(dir)
    um.chat([{"role": "user", "content": "<image>\nWhat is this?"}], images=["cat.png"])
    out = um.generate_images(["a red circle"], num_images=4, cfg_scale=4.0, seed=0)   # out.images, out.codes
"""

from .collator import IGNORE_INDEX, UnifiedCollator
from .configuration import UnifiedConfig
from .generation import (
    DrawnImage,
    ImageGenerationOutput,
    decode,
    generate_images,
    generate_text,
    sample_codes,
    sample_image_codes,
    stream_chat,
    stream_reply,
    stream_text,
    validate_sampling,
)
from .modeling import GEN_SLOT, UnifiedModel, default_attn_implementation
from .processing import UnifiedProcessor
from .projector import PROJECTOR_TYPES, build_projector
from .sampling_config import SamplingConfig
from .templates import TEMPLATES, ConversationTemplate, get_template, register_template

__all__ = [
    "GEN_SLOT",
    "IGNORE_INDEX",
    "PROJECTOR_TYPES",
    "TEMPLATES",
    "ConversationTemplate",
    "DrawnImage",
    "ImageGenerationOutput",
    "SamplingConfig",
    "UnifiedCollator",
    "UnifiedConfig",
    "UnifiedModel",
    "UnifiedProcessor",
    "build_projector",
    "decode",
    "default_attn_implementation",
    "generate_images",
    "generate_text",
    "get_template",
    "register_template",
    "sample_codes",
    "sample_image_codes",
    "stream_chat",
    "stream_reply",
    "stream_text",
    "validate_sampling",
]
