"""SamplingConfig: a model's sampling defaults, saved beside it (`sampling_config.json`), like transformers'
`generation_config.json`.

Every caller (the Python API, `vqrae generate`, `vqrae chat`, the eval suites) takes its defaults from here, so a
model trained to be sampled at guidance 3 is sampled at guidance 3 unless somebody asks otherwise, and no function
signature hard-codes a scale. An argument left as None means "the model's default".
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

SAMPLING_CONFIG_NAME = "sampling_config.json"


@dataclass
class SamplingConfig:
    # text-to-image
    cfg_scale: float = 4.0  # classifier-free guidance; 1 = conditional logits (guidance=False skips the uncond rows)
    cfg_schedule: str = "constant"  # or "linear": ramp from 1 to cfg_scale over the image
    guidance: bool = True  # run the unconditional rows at all
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    num_images: int = 4  # per prompt
    image_tokens: int = 0  # h*w codes per image: fixed by the tokenizer's grid, recorded and checked on load
    # answers
    max_new_tokens: int = 256
    text_temperature: float = 0.0  # greedy
    text_top_k: int = 0
    text_top_p: float = 1.0

    def __post_init__(self) -> None:
        from .generation import validate_sampling

        validate_sampling(self.temperature, self.top_k, self.top_p, self.cfg_scale, self.cfg_schedule)
        validate_sampling(self.text_temperature, self.text_top_k, self.text_top_p)
        for key in ("num_images", "max_new_tokens"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise ValueError(f"sampling config: {key} must be a positive integer, got {getattr(self, key)!r}")

    # ----- the image and text halves, as keyword arguments of the sampler -----
    def image_kwargs(self) -> dict:
        return {"cfg_scale": self.cfg_scale if self.guidance else None, "cfg_schedule": self.cfg_schedule,
                "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def text_kwargs(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.text_temperature,
                "top_k": self.text_top_k, "top_p": self.text_top_p}

    def replace(self, **changes) -> SamplingConfig:
        """A copy with `changes` applied; None values are ignored (they mean "keep the default")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    # ----- files -----
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        path = Path(save_directory) / SAMPLING_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **hub_kwargs) -> SamplingConfig | None:
        """Read `sampling_config.json` from a folder or hub id; None when the model has none."""
        local = Path(name_or_path) / SAMPLING_CONFIG_NAME
        if local.is_file():
            file = local
        else:
            from transformers.utils import cached_file

            found = None
            if not Path(name_or_path).is_dir():
                found = cached_file(str(name_or_path), SAMPLING_CONFIG_NAME, _raise_exceptions_for_missing_entries=False,
                                    **hub_kwargs)
            if found is None:
                return None
            file = Path(found)
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file} is not valid JSON ({exc.msg})") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{file}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)
