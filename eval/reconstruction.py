"""Reconstruction evaluation of a tokenizer: PSNR, SSIM, LPIPS, rFID, codebook usage, feature fidelity.

PSNR and SSIM follow the usual tokenizer-paper protocol: uint8 images (data range 255), per image, then the mean.
LPIPS and rFID need weights that cannot be downloaded here: they run when given local files
(`lpips_vgg_weights`: a torchvision vgg16 state dict; `inception_weights`: torch-fidelity's
pt_inception-2015-12-05 file) and are reported as not computed otherwise, with the reason.
Codebook utilization and perplexity are over the whole set; feature cosine compares the tokenizer's continuous
features with a reference encoder's (e.g. the stage-1 encoder after stage 2) token by token. The colour probe
(eval/probe.py) says whether lost detail was lost in the encoder or in the codes.

On ShapesWorld images (whose records carry the objects' ground truth: `ShapesDataset` items, or a folder written by
`vqrae data shapes`), the reconstruction fidelity of `eval/fidelity.py` is measured too: per-object shape, colour and
box accuracy of the ShapesWorld detector on the reconstructions and on the originals, the GenEval-style score of
both per tag, and the patch shape probe (shape kept by the features vs by the codes). PSNR cannot tell a star from a
blob of its colour; these figures can.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vqrae.tokenizer import VQRAE, CodebookUsage

from .fidelity import ObjectFidelity, PatchShapeProbe, RecordLookup, label_map
from .metrics import psnr, to_uint8
from .probe import PatchColourProbe

logger = logging.getLogger(__name__)


def ssim(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (scikit-image, uint8, data range 255, colour channels averaged), (B,)."""
    from skimage.metrics import structural_similarity

    a = to_uint8(reference).permute(0, 2, 3, 1).cpu().numpy()
    b = to_uint8(reconstruction).permute(0, 2, 3, 1).cpu().numpy()
    side = min(a.shape[1], a.shape[2])
    win = min(7, side if side % 2 else side - 1)
    return torch.tensor([structural_similarity(x, y, data_range=255, channel_axis=2, win_size=win)
                         for x, y in zip(a, b)], dtype=torch.float64)


class FIDFeatures:
    """Inception-v3 pool features (torch-fidelity's FID network) from a local weights file."""

    def __init__(self, weights: str, device: str | torch.device = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if not os.path.isfile(weights):
            raise FileNotFoundError(f"inception weights not found: {weights}")
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=weights).to(device)
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).to(self.device)
        return self.net(x)[0].double().cpu()

    @staticmethod
    def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

        return float(fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake),
                                              verbose=False)["frechet_inception_distance"])


def save_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, columns: int = 8) -> None:
    """A PNG with pairs of rows: up to 4 rows of `columns` originals, each above the row of their reconstructions."""
    from vqrae.data.images import image_grid

    n = min(len(originals), 4 * columns)
    if n == 0:
        raise ValueError("save_grid: no images")
    columns = min(columns, n)
    cells: list[torch.Tensor | None] = []
    for start in range(0, n, columns):
        idx = range(start, min(start + columns, n))
        blanks = [None] * (columns - len(idx))  # a short last row: its reconstructions still start a new row
        cells += [originals[i] for i in idx] + blanks + [reconstructions[i] for i in idx] + blanks
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image_grid(cells, columns).save(path)


@torch.no_grad()
def reconstruction_metrics(
    vq: VQRAE,
    dataset: Dataset,
    batch_size: int = 32,
    reference_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    lpips_vgg_weights: str | None = None,
    inception_weights: str | None = None,
    to_device: Callable = lambda b: b,
    grid_path: str | Path | None = None,
    progress: bool = True,
    quantize: bool = True,
    fidelity: bool = True,
) -> dict:
    """Evaluate `vq` on every image of `dataset` (items with "pixels" (3,H,W) in [0,1]).

    quantize=False decodes the continuous features instead (the RAE baseline): no codes, so no codebook usage.
    fidelity=True measures object fidelity (eval/fidelity.py) on the images that have a ShapesWorld record (none:
    the figures are left out, with a note).
    """
    from tqdm.auto import tqdm

    was_training = vq.training
    vq.eval()
    lpips_net = None
    notes = {}
    if lpips_vgg_weights:
        from vqrae.tokenizer.losses import build_lpips

        lpips_net = build_lpips(lpips_vgg_weights).to(vq.device)
    else:
        notes["lpips"] = "not computed: pass LPIPS backbone weights (a torchvision vgg16 state dict)"
    fid_net = FIDFeatures(inception_weights, vq.device) if inception_weights else None
    if fid_net is None:
        notes["rfid"] = "not computed: pass inception weights (torch-fidelity pt_inception-2015-12-05)"
    usage = CodebookUsage(vq.config.codebook_size)
    probe = PatchColourProbe()
    objects = ObjectFidelity() if fidelity else None
    shape_probe = PatchShapeProbe() if fidelity else None
    lookup = RecordLookup()
    psnrs, ssims, lpipss, cosines, real_feats, fake_feats = [], [], [], [], [], []
    skipped = 0
    first = None
    from vqrae.data.readers import collate

    batches = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in tqdm(batches, desc="reconstruction eval", disable=not progress):
        pixels = to_device(batch["pixels"])
        skipped += batch.get("skipped", 0)
        features = vq.encode(pixels)
        if quantize:
            codes = vq.quantizer.lookup(features)
            recon = vq.decode(codes)
            usage.update(codes)
            if not probe.full:
                probe.update(pixels, features, vq.quantizer.code_vectors(codes))
        else:
            recon = vq.decode_features(features, quantize=False)
        psnrs.append(psnr(pixels, recon).cpu())
        ssims.append(ssim(pixels, recon))
        if lpips_net is not None:
            lpipss.append(lpips_net(recon, pixels, normalize=True).flatten().double().cpu())
        if fid_net is not None:
            real_feats.append(fid_net(pixels))
            fake_feats.append(fid_net(recon))
        if reference_encoder is not None:
            cosines.append(F.cosine_similarity(features, reference_encoder(pixels), dim=-1).mean(dim=1).double().cpu())
        if objects is not None:
            records = batch.get("record") or [lookup(n) if isinstance(n, str) else None for n in batch["name"]]
            _measure_fidelity(objects, shape_probe if quantize else None, pixels, recon, features,
                              vq.quantizer.code_vectors(codes) if quantize and not shape_probe.full else None, records)
        if first is None:
            first = (pixels.cpu(), recon.cpu())
    if first is None:
        raise ValueError("the evaluation data set holds no image")
    vq.train(was_training)
    finite = torch.cat(psnrs)
    finite = finite[torch.isfinite(finite)]  # identical images have infinite PSNR; they carry no mean
    out = {
        "images": int(sum(len(p) for p in psnrs)),
        "psnr": float(finite.mean()) if len(finite) else float("inf"),
        "ssim": float(torch.cat(ssims).mean()),
        "skipped_images": int(skipped),
    }
    if quantize:
        out.update(utilization=usage.utilization, perplexity=usage.perplexity)
    if lpipss:
        out["lpips"] = float(torch.cat(lpipss).mean())
    if fid_net is not None:
        out["rfid"] = FIDFeatures.fid(torch.cat(real_feats), torch.cat(fake_feats))
    out.update(probe.result())
    if objects is not None:
        found = objects.result()
        if found:
            out.update(shape_probe.result())
            out.update(found)
        else:
            notes["fidelity"] = "not measured: no image has a ShapesWorld record (objects and GenEval metadata)"
    if cosines:
        out["feature_cosine"] = float(torch.cat(cosines).mean())
    if grid_path is not None:
        save_grid(*first, grid_path)
    if notes:
        out["notes"] = notes
    return out


def _measure_fidelity(objects: ObjectFidelity, shape_probe: PatchShapeProbe | None, pixels: torch.Tensor,
                      recon: torch.Tensor, features: torch.Tensor, code_vectors: torch.Tensor | None,
                      records: list) -> None:
    """Feed the images of a batch that have a ShapesWorld record to the object and shape-probe measures."""
    from vqrae.data.images import tensor_to_pil

    have = [i for i, r in enumerate(records) if isinstance(r, dict) and "objects" in r]
    for i in have:
        objects.update(tensor_to_pil(pixels[i]), tensor_to_pil(recon[i]), records[i])
    if shape_probe is not None and code_vectors is not None and have and not shape_probe.full:
        size = pixels.shape[-1]
        labels = torch.stack([torch.from_numpy(label_map(records[i], size)) for i in have])
        idx = torch.tensor(have, device=features.device)
        shape_probe.update(labels, features[idx], code_vectors[idx])


def write_summary(metrics: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(metrics, indent=2) + "\n")


def load_reference_encoder(path: str, device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """The continuous encoder of a VQRAE folder, or a bare SigLIP/DINOv2 folder, as pixels -> (B, N, d)."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"reference encoder folder has no config.json: {path}")
    model_type = json.loads(cfg_file.read_text()).get("model_type", "")
    if model_type == "vqrae":
        from vqrae.tokenizer import load_vqrae

        return load_vqrae(path, device).encoder.eval()
    from vqrae.tokenizer.encoders import build_encoder, load_encoder_weights, resolve_encoder

    kind = "dinov2" if model_type.startswith("dinov2") else "siglip"
    spec = resolve_encoder(kind, path)
    encoder = build_encoder(kind, spec.config, spec.image_mean, spec.image_std)
    load_encoder_weights(encoder, kind, path)
    return encoder.to(device).eval()


__all__ = [
    "FIDFeatures",
    "load_reference_encoder",
    "reconstruction_metrics",
    "save_grid",
    "ssim",
    "write_summary",
]
