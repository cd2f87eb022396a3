"""Caption and conversation records: reading JSON / JSONL files and validating each record.

Caption record (text-to-image):   {"image": "relative/path.png", "caption": "a photo of a red circle", ...}
Conversation record (LLaVA):      {"id": ..., "image": "relative/path.png",
                                   "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                                                     {"from": "gpt", "value": "A red circle."}, ...]}
`file_name` (the Hugging Face imagefolder key) is accepted in place of `image`. A conversation without `image` is
text-only. Turns alternate human/gpt starting with human and ending with gpt (`user`/`assistant` are accepted as
aliases); with an image, exactly one human turn holds the `<image>` placeholder. A malformed record is an
`InvalidRecord` (a ValueError) naming the file and the record index, raised when the file is opened, never halfway
through a run. A file that cannot be read as records at all (not JSON, empty) is a plain ValueError.
"""

from __future__ import annotations

import json
from pathlib import Path

# The placeholder for an image in a conversation; the unified model's vocabulary uses this very string.
IMAGE_TOKEN = "<image>"
# Speaker names (LLaVA's and chat messages') -> chat roles: the one table for the readers and the collator.
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# Chat role -> the LLaVA speaker name that conversation records carry once validated.
LLAVA_SPEAKERS = {"user": "human", "assistant": "gpt"}


class InvalidRecord(ValueError):
    """A record that fails validation (missing or malformed fields, an unreadable image): bad input, never a bug.

    Readers raise it when a record file is opened; the unified collator skips a record that raises it, and lets
    every other exception (a programming error) through.
    """


def read_records(path: str | Path) -> list[dict]:
    """A JSON file holding a list of objects, or a JSONL file with one object a line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"record file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        records = data
    else:
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from exc
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _image_field(rec: dict, where: str, required: bool) -> str | None:
    image = rec.get("image", rec.get("file_name"))
    if image is None and not required:
        return None
    if not isinstance(image, str) or not image:
        raise InvalidRecord(f"{where}: 'image' must be a non-empty path string, got {image!r}")
    return image


def _check_dict(rec: object, where: str) -> dict:
    if not isinstance(rec, dict):
        raise InvalidRecord(f"{where}: expected a JSON object, got {type(rec).__name__}")
    return rec


def parse_caption_record(rec: object, where: str, caption_key: str = "caption") -> dict:
    """-> {"image": str, "caption": str} (+ "captions", the alternative captions, when the record lists them, as
    ShapesWorld's do); InvalidRecord naming `where` if the record is malformed."""
    rec = _check_dict(rec, where)
    caption = rec.get(caption_key)
    if not isinstance(caption, str) or not caption.strip():
        raise InvalidRecord(f"{where}: '{caption_key}' must be a non-empty string, got {caption!r}")
    out = {"image": _image_field(rec, where, required=True), "caption": caption}
    captions = rec.get("captions")
    if captions is not None:
        if not isinstance(captions, list) or not all(isinstance(c, str) and c.strip() for c in captions):
            raise InvalidRecord(f"{where}: 'captions' must be a list of non-empty strings")
        out["captions"] = captions
    return out


def parse_conversation_record(rec: object, where: str) -> dict:
    """-> {"id": str | None, "image": str | None, "conversations": [{"from", "value"}, ...]} (roles normalised)."""
    rec = _check_dict(rec, where)
    image = _image_field(rec, where, required=False)
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise InvalidRecord(f"{where}: 'conversations' must be a non-empty list of turns")
    turns = []
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise InvalidRecord(f"{where}: turn {k} must be {{'from': ..., 'value': str}}, got {turn!r}")
        speaker = turn["from"]
        role = LLAVA_SPEAKERS.get(ROLE_ALIASES.get(speaker, "")) if isinstance(speaker, str) else None
        if role is None:
            raise InvalidRecord(f"{where}: turn {k} has unknown role {turn['from']!r} (expected human or gpt)")
        expected = "human" if k % 2 == 0 else "gpt"
        if role != expected:
            raise InvalidRecord(f"{where}: turn {k} is from {role} but turns must alternate human, gpt, ...")
        turns.append({"from": role, "value": turn["value"]})
    if turns[-1]["from"] != "gpt":
        raise InvalidRecord(f"{where}: the last turn must be a gpt answer")
    n_tokens = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    if sum(t["value"].count(IMAGE_TOKEN) for t in turns if t["from"] == "gpt"):
        raise InvalidRecord(f"{where}: {IMAGE_TOKEN} appears in a gpt turn")
    if image is not None and n_tokens != 1:
        raise InvalidRecord(f"{where}: a record with an image needs exactly one {IMAGE_TOKEN} placeholder, "
                            f"found {n_tokens}")
    if image is None and n_tokens:
        raise InvalidRecord(f"{where}: {IMAGE_TOKEN} placeholder but no 'image' field")
    rid = rec.get("id")
    return {"id": None if rid is None else str(rid), "image": image, "conversations": turns}


def parse_records(records: list, source: str, kind: str, caption_key: str = "caption") -> list[dict]:
    """Validate every record of a file up front; errors name `source` and the record index."""
    parse = {"image": lambda r, w: {"image": _image_field(_check_dict(r, w), w, required=True)},
             "caption": lambda r, w: parse_caption_record(r, w, caption_key),
             "conversation": parse_conversation_record}.get(kind)
    if parse is None:
        raise ValueError(f"unknown record kind {kind!r}; expected image, caption or conversation")
    out = []
    for i, rec in enumerate(records):
        rid = rec.get("id") if isinstance(rec, dict) else None
        out.append(parse(rec, f"{source}: record {i}" + (f" (id {rid})" if rid is not None else "")))
    return out
