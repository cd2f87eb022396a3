"""Where a saved model comes from: a local folder or a Hugging Face hub id (also served from the local hub cache).

`check_model_source` runs before `from_pretrained`, so the usual mistakes (a typo in a path, a folder of the wrong
model, missing weights, no network for a hub id) are one-line errors that name the culprit, not a transformers
traceback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

# owner/name as the hub spells it; a path with more parts, or one that starts with "/", "." or "~", is local only.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name


def check_model_source(name_or_path: str | os.PathLike, model_type: str, what: str, weights: bool = True) -> str:
    """Check a local folder (or a hub id) holds a `model_type` model; returns the string to hand to from_pretrained.

    `what` names the thing in errors ("tokenizer", "model"). Raises FileNotFoundError / ValueError / OSError with
    one line.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{name} is not a {what} folder: it has no config.json")
        try:
            found = json.loads(config_file.read_text()).get("model_type")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file} is not valid JSON ({exc.msg})") from None
        if found != model_type:
            raise ValueError(f"{name} holds a {found!r} model, not a {what}")
        if weights and not any(f.endswith(".safetensors") for f in os.listdir(path)):
            raise FileNotFoundError(f"{name} has no model.safetensors (weights missing)")
        return str(path)
    if path.exists():
        raise FileNotFoundError(f"{what} folder expected, got a file: {name}")
    if not looks_like_hub_id(name):
        raise FileNotFoundError(f"{what} folder not found: {name}")
    from transformers.utils import cached_file

    try:
        config_file = cached_file(name, "config.json")
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OSError(f"{what} not found: {name} is neither a local folder nor a model the Hugging Face hub (or its "
                      f"local cache) could give ({first})") from None
    found = json.loads(Path(config_file).read_text()).get("model_type")
    if found != model_type:
        raise ValueError(f"hub model {name} is a {found!r} model, not a {what} ({model_type!r})")
    return name
