"""vqrae: one visual tokenizer (continuous features for understanding, discrete codes for generation) and a unified
multimodal model on top of it (VQRAE, arXiv 2511.23386).

    import vqrae
    vq = vqrae.VQRAE.from_pretrained(dir_or_hub_id)
    feats, codes = vq.encode(pixels), vq.tokenize(pixels)
    um = vqrae.UnifiedModel.from_pretrained(dir_or_hub_id)
    proc = vqrae.UnifiedProcessor.from_pretrained(dir_or_hub_id)

The installed distribution is this one package; the repository's folders are its parts (pyproject.toml maps them):
`vqrae.tokenizer`, `vqrae.unified_model`, `vqrae.data`, `vqrae.train`, `vqrae.eval` and `vqrae.cli` (from scripts/).
Importing `vqrae` registers both model types with transformers' AutoConfig / AutoModel / AutoProcessor.
"""

import importlib
import sys

__version__ = "0.1.0"

if __name__ != "vqrae":
    # This file is the package `vqrae` once installed (pyproject.toml maps the checkout's root to it). Tools that
    # walk the checkout's folders (pytest, collecting tests/) import it under the folder's own name: hand them the
    # real package rather than load a second copy of every module (which would re-register the model classes with
    # transformers' Auto* classes).
    sys.modules[__name__] = importlib.import_module("vqrae")
else:
    from .tokenizer import VQRAE, VQRAEConfig, load_vqrae
    from .unified_model import UnifiedConfig, UnifiedModel, UnifiedProcessor

__all__ = ["VQRAE", "UnifiedConfig", "UnifiedModel", "UnifiedProcessor", "VQRAEConfig", "__version__", "load_vqrae"]
