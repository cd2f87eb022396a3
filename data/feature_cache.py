"""Codes and continuous features of a data set, computed once with a frozen VQRAE and cached on disk.

Stages that train on a frozen tokenizer's output (LlamaGen-style generation on codes, LLaVA-style alignment on
features) would otherwise run the encoder on every image at every step. `EncodedCache.get` runs it once:

    cache = EncodedCache(root="runs/cache", vqrae=vq, what="codes")          # or what="features"
    codes = cache.get("shapes64-train-n512", dataset, image_fn=lambda item: item["pixels"])
    train_set = CachedDataset(dataset, codes, field="codes")                 # item["codes"] replaces item["pixels"]

Key. A cache is a folder `ROOT/{what}-{tokenizer fingerprint}-{hash of dataset_key}`. The tokenizer fingerprint
(`tokenizer_fingerprint`) hashes exactly what the cached values depend on, so changing the tokenizer invalidates on
its own (the old folder is simply no longer looked up):
- features (`VQRAE.encode`): the encoder's weights and buffers (`encoder.*`) plus the settings that change its output
  without being weights: encoder type and config, image size, normalisation mean/std.
- codes (`VQRAE.tokenize` = encode, then the quantizer's nearest-code lookup): additionally every `quantizer.*`
  tensor (the lookup reads proj_in, the frozen codebook C and the map W; proj_out trains together with them, so
  covering the whole quantizer costs no extra rebuilds) and the codebook settings (size, dim, l2_normalize).
The decoder is never covered: retraining it leaves codes and features valid.
`dataset_key` is the caller's promise that it names the data (source, split, size, transform); the item count is
checked on load as a safety net, and a mismatch rebuilds.

Layout of a cache folder: `values.npy` (codes (N, h*w) int16, or int32 above 32768 codes; features (N, T, d)
float16; opened memory-mapped so a cache larger than RAM works), `valid.npy` (N,) bool (False: the image was
unreadable, its row is zeros) and `meta.json`. A build writes into `ROOT/.partial-...` and renames the finished
folder into place in one `os.replace`, so a crash never leaves a folder that looks complete; partial folders of
dead processes on this host are removed by the next build.

Distributed (torch.distributed initialised, world > 1): rank 0 looks up or builds, the other ranks wait for it in a
collective (which also carries rank 0's error, if any, so no rank hangs) and then open the same folder, so ROOT
must be on a file system all nodes share. The wait is under the process group's timeout (NCCL: 30 min by default):
build very large caches before launching, or raise that timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vqrae.data.images import UnreadableImage

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout or the meaning of stored values changes: every old cache then misses
WHATS = ("codes", "features")
# State-dict prefixes each kind of value depends on (see the module docstring).
PREFIXES: dict[str, tuple[str, ...]] = {"features": ("encoder.",), "codes": ("encoder.", "quantizer.")}
_PARTIAL = ".partial-"
_MAX_LOGGED_INVALID = 5


# -- fingerprints -----------------------------------------------------------------------------------------------


def weights_fingerprint(module: nn.Module, prefixes: tuple[str, ...] | None = None) -> str:
    """sha256 (first 16 hex digits) over the names, dtypes, shapes and bytes of `module`'s state-dict entries and
    buffers (non-persistent ones too) whose names start with one of `prefixes` (None: all of them).

    Entries are taken in sorted name order and hashed from CPU copies, so the result does not depend on the
    process, the device or the order in which the module registered its children; any changed byte changes it.
    """
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    tensors: dict[str, torch.Tensor] = dict(module.state_dict(keep_vars=True))
    for name, buf in module.named_buffers():
        tensors.setdefault(name, buf)
    names = sorted(n for n in tensors if prefixes is None or n.startswith(tuple(prefixes)))
    if not names:
        raise ValueError(f"no weights of {type(module).__name__} start with any of {prefixes}")
    digest = hashlib.sha256()
    for name in names:
        t = tensors[name].detach()
        if t.device.type == "meta" or hasattr(t, "ds_id"):
            raise ValueError(f"weight {name} is not materialised (meta device or ZeRO-3 partitioned): gather the "
                             "tokenizer's weights before fingerprinting it")
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _behaviour_settings(vqrae, what: str) -> dict[str, Any]:
    """The non-weight settings that change `encode` (and, for codes, `tokenize`) output."""
    cfg = vqrae.config
    settings = {
        "encoder_type": cfg.encoder_type,
        "encoder_config": cfg.encoder_config,
        "image_size": cfg.image_size,
        "image_mean": list(getattr(vqrae.encoder, "image_mean", cfg.image_mean) or []),
        "image_std": list(getattr(vqrae.encoder, "image_std", cfg.image_std) or []),
    }
    if what == "codes":
        settings.update(codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim,
                        l2_normalize=cfg.l2_normalize)
    return settings


def tokenizer_fingerprint(vqrae, what: Literal["codes", "features"]) -> str:
    """The cache key of a tokenizer for one kind of value: the weights it reads plus its settings (16 hex digits)."""
    _check_what(what)
    blob = json.dumps({"format": FORMAT_VERSION, "what": what, "weights": weights_fingerprint(vqrae, PREFIXES[what]),
                       "settings": _behaviour_settings(vqrae, what)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_what(what: str) -> None:
    if what not in WHATS:
        raise ValueError(f"what must be one of {WHATS}, got {what!r}")


# -- a cache on disk --------------------------------------------------------------------------------------------


class CachedValues:
    """One finished cache: `values[i]` is a torch tensor (codes as long, features as float16), `valid` a (N,) bool
    tensor. Indexing takes an int, a slice, a list or a 1-D index tensor. The values stay memory-mapped; pickling
    (e.g. into DataLoader workers) carries only the folder path, never the data."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text())
        self.valid = torch.from_numpy(np.load(self.path / "valid.npy"))
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The raw read-only memory map (N, ...) in its stored dtype."""
        if self._array is None:
            self._array = np.load(self.path / "values.npy", mmap_mode="r")
        return self._array

    @property
    def what(self) -> str:
        return self.meta["what"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def num_invalid(self) -> int:
        return int(len(self.valid) - int(self.valid.sum()))

    @property
    def invalid(self) -> dict[int, str]:
        """Index -> why the image could not be read."""
        return {int(k): v for k, v in self.meta["invalid"].items()}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        out = torch.from_numpy(np.array(self.array[index]))  # a copy: the map is read-only
        return out.long() if self.what == "codes" else out

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"CachedValues({self.what}, shape={self.shape}, invalid={self.num_invalid}, path={str(self.path)!r})"


class _ImageLoader(Dataset):
    """Item i -> (i, pixels or None, why unreadable or None); runs in DataLoader workers when there are any."""

    def __init__(self, images, image_fn: Callable[[Any], torch.Tensor], size: int):
        self.images, self.image_fn, self.size = images, image_fn, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            pixels = self.image_fn(self.images[i])
        except (UnreadableImage, OSError) as exc:  # bad input: recorded; anything else is a bug and propagates
            return i, None, f"{type(exc).__name__}: {exc}"
        if not isinstance(pixels, torch.Tensor) or tuple(pixels.shape) != (3, self.size, self.size):
            got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"image_fn must return a (3, {self.size}, {self.size}) tensor in [0, 1]; item {i} "
                             f"gave {got}")
        return i, pixels, None


def _as_list(batch: list) -> list:
    return batch


class EncodedCache:
    """Codes or features of data sets, built once per (tokenizer, data set) and reused (see the module docstring).

    `batch_size` images go through the tokenizer at a time on `device` (default: where the tokenizer's weights
    are); `num_workers` DataLoader workers run `image_fn` (0: in this process).
    """

    def __init__(self, root: str | Path, vqrae, what: Literal["codes", "features"], batch_size: int = 64,
                 device: str | torch.device | None = None, num_workers: int = 0):
        _check_what(what)
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if Path(root).exists() and not Path(root).is_dir():
            raise ValueError(f"cache root {root} exists and is not a folder")
        self.root, self.vqrae, self.what = Path(root), vqrae, what
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.device = torch.device(device) if device is not None else next(vqrae.parameters()).device

    # -- public -------------------------------------------------------------------------------------------------

    def path_for(self, dataset_key: str) -> Path:
        """The folder that holds (or will hold) the cache of `dataset_key` for the tokenizer as it is now."""
        return self._path(dataset_key, tokenizer_fingerprint(self.vqrae, self.what))

    def _path(self, dataset_key: str, fingerprint: str) -> Path:
        if not isinstance(dataset_key, str) or not dataset_key:
            raise ValueError(f"dataset_key must be a non-empty string, got {dataset_key!r}")
        key_hash = hashlib.sha256(dataset_key.encode()).hexdigest()[:16]
        return self.root / f"{self.what}-{fingerprint}-{key_hash}"

    def get(self, dataset_key: str, images: Sequence | Dataset,
            image_fn: Callable[[Any], torch.Tensor] = lambda item: item["pixels"]) -> CachedValues:
        """The cached values of `images` (item i -> `image_fn(images[i])`, (3, S, S) in [0, 1]): loaded on a hit,
        built on a miss. Items whose `image_fn` raises UnreadableImage or OSError are recorded as invalid."""
        fingerprint = tokenizer_fingerprint(self.vqrae, self.what)
        path = self._path(dataset_key, fingerprint)
        try:
            n = len(images)
        except TypeError:
            raise ValueError(f"images must be a sized, indexable data set, got {type(images).__name__}") from None
        if n == 0:
            raise ValueError(f"data set {dataset_key!r} is empty: nothing to cache")
        if not _distributed():
            return self._load_or_build(path, fingerprint, dataset_key, images, image_fn, n)
        if torch.distributed.get_rank() == 0:
            result, error = None, None
            try:
                result = self._load_or_build(path, fingerprint, dataset_key, images, image_fn, n)
            except Exception as exc:  # noqa: BLE001 (re-raised below, once the other ranks know)
                error = exc
            torch.distributed.broadcast_object_list([None if error is None else repr(error)], src=0)
            if error is not None:
                raise error
            return result
        status: list[Any] = [None]
        torch.distributed.broadcast_object_list(status, src=0)
        if status[0] is not None:
            raise RuntimeError(f"rank 0 failed to build the cache {path}: {status[0]}")
        cached = self._load(path, n, dataset_key)
        if cached is None:
            raise FileNotFoundError(f"{path}: rank 0 built this cache but this rank cannot read it (a cache root "
                                    "on a file system all nodes share is needed, and the same tokenizer weights)")
        return cached

    # -- internals ----------------------------------------------------------------------------------------------

    def _load_or_build(self, path: Path, fingerprint: str, key: str, images, image_fn, n: int) -> CachedValues:
        cached = self._load(path, n, key)
        if cached is not None:
            logger.info("%s cache hit: %s (%d items, %d invalid)", self.what, path, n, cached.num_invalid)
            return cached
        logger.info("%s cache miss: encoding %d items of %r into %s", self.what, n, key, path)
        return self._build(path, fingerprint, key, images, image_fn, n)

    def _load(self, path: Path, n: int, key: str) -> CachedValues | None:
        if not (path / "meta.json").is_file():
            return None
        try:
            cached = CachedValues(path)
            meta = cached.meta
            if meta.get("format") != FORMAT_VERSION or meta.get("dataset_key") != key:
                logger.warning("cache %s was written for %r by format %s; rebuilding", path, meta.get("dataset_key"),
                               meta.get("format"))
                return None
            if len(cached) != n or cached.array.shape != cached.shape or len(cached.valid) != n:
                logger.warning("cache %s holds %d items but %r has %d (a dataset_key must name the data); "
                               "rebuilding", path, len(cached), key, n)
                return None
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("unreadable cache %s (%s); rebuilding", path, exc)
            return None
        return cached

    def _item_shape(self) -> tuple[tuple[int, ...], np.dtype]:
        if self.what == "codes":
            dtype = np.int16 if self.vqrae.config.codebook_size <= 2**15 else np.int32
            return (self.vqrae.num_tokens,), np.dtype(dtype)
        return (self.vqrae.num_tokens, self.vqrae.feature_dim), np.dtype(np.float16)

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, torch.float32)
        if self.what == "codes":
            return self.vqrae.tokenize(pixels).reshape(pixels.shape[0], -1).cpu()
        feats = self.vqrae.encode(pixels).to(torch.float16).cpu()
        if not torch.isfinite(feats).all():
            raise ValueError("VQRAE features overflow float16 (|x| > 65504): they cannot be cached as float16")
        return feats

    def _build(self, path: Path, fingerprint: str, key: str, images, image_fn, n: int) -> CachedValues:
        from tqdm.auto import tqdm

        self.root.mkdir(parents=True, exist_ok=True)
        _remove_dead_partials(self.root, path.name)
        partial = self.root / f"{_PARTIAL}{path.name}-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            item_shape, dtype = self._item_shape()
            values = np.lib.format.open_memmap(partial / "values.npy", mode="w+", dtype=dtype,
                                               shape=(n, *item_shape))
            valid = np.zeros(n, dtype=bool)
            invalid: dict[str, str] = {}
            loader = DataLoader(_ImageLoader(images, image_fn, self.vqrae.image_size), batch_size=self.batch_size,
                                shuffle=False, num_workers=self.num_workers, collate_fn=_as_list)
            with _eval_mode(self.vqrae), tqdm(total=n, desc=f"caching {self.what}", unit="img") as bar:
                for batch in loader:
                    for i, _, why in batch:
                        if why is not None:
                            invalid[str(i)] = why
                            if len(invalid) <= _MAX_LOGGED_INVALID:
                                logger.warning("unreadable image at index %d, recorded as invalid: %s", i, why)
                    ok = [(i, pixels) for i, pixels, why in batch if why is None]
                    if ok:
                        index = [i for i, _ in ok]
                        values[index] = self._encode(torch.stack([p for _, p in ok])).numpy().astype(dtype)
                        valid[index] = True
                    bar.update(len(batch))
            values.flush()
            del values
            if invalid:
                logger.warning("%d of %d images of %r were unreadable (recorded as invalid)", len(invalid), n, key)
            np.save(partial / "valid.npy", valid)
            meta = {"format": FORMAT_VERSION, "what": self.what, "fingerprint": fingerprint,
                    "dataset_key": key, "shape": [n, *item_shape], "dtype": dtype.name,
                    "num_invalid": len(invalid), "invalid": invalid}
            (partial / "meta.json").write_text(json.dumps(meta, indent=1))
            for name in ("values.npy", "valid.npy", "meta.json"):
                _fsync(partial / name)
            if path.exists():  # a stale or unreadable cache under the same name (it missed above)
                shutil.rmtree(path)
            try:
                os.replace(partial, path)  # the one step that makes the cache visible
            except OSError:
                if not (path / "meta.json").is_file():
                    raise
                logger.info("another process finished %s first; using its copy", path)  # same key, same values
                shutil.rmtree(partial, ignore_errors=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return CachedValues(path)


class CachedDataset(Dataset):
    """`base` (a map-style data set of dict items) with `item[field] = cache_values[i]` and "pixels" dropped.

    Invalid items (unreadable images) are kept; choose among them with `valid` / `valid_indices()`, e.g.
    `torch.utils.data.Subset(ds, ds.valid_indices())`. Note that `base` still builds each item as it would,
    pixels included; only what follows (collate, transfer, encoder) is saved.
    """

    def __init__(self, base: Dataset, cache_values: CachedValues, field: str):
        if not isinstance(field, str) or not field:
            raise ValueError(f"field must be a non-empty string, got {field!r}")
        if len(base) != len(cache_values):
            raise ValueError(f"cache holds {len(cache_values)} items but the data set has {len(base)}")
        self.base, self.values, self.field = base, cache_values, field

    def __len__(self) -> int:
        return len(self.base)

    @property
    def valid(self) -> torch.Tensor:
        return self.values.valid

    def valid_indices(self) -> list[int]:
        return torch.nonzero(self.valid).flatten().tolist()

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if not isinstance(item, dict):
            raise TypeError(f"CachedDataset needs dict items, {type(self.base).__name__} gave {type(item).__name__}")
        item = dict(item)
        item.pop("pixels", None)
        item[self.field] = self.values[i]
        return item


# -- helpers ----------------------------------------------------------------------------------------------------


def _distributed() -> bool:
    # torch.distributed directly, not vqrae.train.distributed: data/ sits below train/ and must not import it.
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the build (no dropout: cached values must equal inference outputs), then back as it was."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _remove_dead_partials(root: Path, name: str) -> None:
    """Partial folders of `name` left by crashed processes of this host (another host's cannot be checked)."""
    prefix, host = f"{_PARTIAL}{name}-", socket.gethostname()
    for p in root.glob(f"{prefix}*"):
        owner, _, pid = p.name[len(prefix):].rpartition("-")
        if owner == host and pid.isdigit() and not _pid_alive(int(pid)):
            logger.info("removing the partial cache %s of a process that is gone", p)
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["CachedDataset", "CachedValues", "EncodedCache", "tokenizer_fingerprint", "weights_fingerprint"]
