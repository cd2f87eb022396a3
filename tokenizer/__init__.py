"""The VQRAE tokenizer: continuous features for understanding, discrete codes for generation, pixels back.

    from vqrae.tokenizer import VQRAE
    vq = VQRAE.from_pretrained(folder)
    feats, codes = vq.encode(pixels), vq.tokenize(pixels)
    images = vq.decode(codes)
"""

from .configuration import VQRAEConfig
from .modeling import VQRAE, VQRAEOutput, load_vqrae
from .patch_kmeans import PatchKMeansVQ
from .quantizer import CodebookUsage, SimVQ, nearest_code

__all__ = ["VQRAE", "CodebookUsage", "PatchKMeansVQ", "SimVQ", "VQRAEConfig", "VQRAEOutput", "load_vqrae", "nearest_code"]
