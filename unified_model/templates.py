"""Conversation templates: how a list of chat messages becomes the text the LLM sees.

A template is chosen by name in `UnifiedConfig.template` and resolved with `resolve_template(name, tokenizer)`:
- `"auto"` (the default): the text tokenizer's own chat template (`tokenizer.chat_template`, the jinja template that
  `tokenizer.apply_chat_template` renders) when it has one, split into a `ConversationTemplate` by
  `template_from_chat_template`; a tokenizer without a chat template (a from-scratch one, ShapesWorld) gets our
  `plain` template, which needs nothing but the tokenizer's EOS.
- any other name: a template of this registry (`get_template`), e.g. `chatml` for a base LLM without a template.

A template renders a conversation as a list of *segments* `(text, is_target)`: the assistant's replies (and the token
that ends them) are targets, everything else is context. The processor tokenizes the joined text as a whole and marks
as targets the tokens inside the target segments' character ranges (`UnifiedProcessor.encode_conversation`), for
training (label masks) and inference (prompt) alike; a template derived from a chat template renders exactly what
`apply_chat_template` renders (checked when it is derived), so the ids are those of `apply_chat_template(tokenize=True)`
(save where a token would straddle the start of a reply: see `processing`).

Every special string a registry template uses (`<|im_start|>`, ...) is listed in `special_tokens` and added to the
text tokenizer when the unified model is built, so any template works with any tokenizer (a from-scratch SentencePiece
one included). `{eos}` in a template stands for the tokenizer's end-of-sequence token.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
AUTO = "auto"
AUTO_FALLBACK = "plain"  # "auto" for a tokenizer without a chat template


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    # Format strings per role with a `{content}` field; the assistant's is split so the reply is the target.
    system: str
    user: str
    assistant_prefix: str
    assistant_suffix: str  # ends a reply: part of the target, so the model learns to stop
    turn_separator: str  # after a reply, not a target
    stop: str  # the string whose token ends generation (must be a single token after vocab extension)
    default_system: str | None = None
    add_bos: bool = False  # prepend the tokenizer's BOS once (SentencePiece models trained with it)
    special_tokens: tuple[str, ...] = field(default_factory=tuple)
    prefix: str = ""  # text before the first message (e.g. a chat template's `{{ bos_token }}`), not a target

    def segments(
        self, messages: list[dict], add_generation_prompt: bool = False, eos: str = ""
    ) -> list[tuple[str, bool]]:
        """Render `messages` ([{"role", "content"}]) as `(text, is_target)` segments.

        `add_generation_prompt=True` ends with the assistant prefix, ready for the model to answer.
        """
        sub = lambda s: s.replace("{eos}", eos)
        out: list[tuple[str, bool]] = [(sub(self.prefix), False)]
        msgs = list(messages)
        if self.default_system and not (msgs and msgs[0].get("role") == "system"):
            msgs.insert(0, {"role": "system", "content": self.default_system})
        for i, m in enumerate(msgs):
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise ValueError(f"message {i}: role must be one of {ROLES}, got {role!r}")
            if not isinstance(content, str):
                # A bad record is a ValueError everywhere in the project (the CLI turns it into one line).
                raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")  # noqa: TRY004
            if role == "system":
                out.append((sub(self.system).format(content=content), False))
            elif role == "user":
                out.append((sub(self.user).format(content=content), False))
            else:
                out.append((sub(self.assistant_prefix), False))
                out.append((content + sub(self.assistant_suffix), True))
                out.append((sub(self.turn_separator), False))
        if add_generation_prompt:
            out.append((sub(self.assistant_prefix), False))
        # Merge neighbours with the same role in the loss so the tokenizer sees longer strings.
        merged: list[tuple[str, bool]] = []
        for text, target in out:
            if merged and merged[-1][1] == target:
                merged[-1] = (merged[-1][0] + text, target)
            elif text:
                merged.append((text, target))
        return merged

    def render(self, messages: list[dict], add_generation_prompt: bool = False, eos: str = "") -> str:
        return "".join(t for t, _ in self.segments(messages, add_generation_prompt, eos))

    def stop_string(self, eos: str) -> str:
        return self.stop.replace("{eos}", eos)

    def to_jinja(self) -> str:
        """This template as a Hugging Face chat template (jinja): `apply_chat_template` with it renders what
        `render` renders (with `{eos}` as the tokenizer's `eos_token`; `add_bos` templates start with `bos_token`).
        The processor of a model whose template comes from this registry saves it as its `chat_template.jinja`."""
        eos_mark, content_mark = "\x00eos\x00", "\x00content\x00"

        def expr(text: str) -> str:  # a literal with {eos} marks -> a jinja expression
            parts = text.split(eos_mark)
            return " + eos_token + ".join(json.dumps(p, ensure_ascii=False) for p in parts)

        def around(fmt: str) -> tuple[str, str]:
            before, after = fmt.replace("{eos}", eos_mark).format(content=content_mark).split(content_mark)
            return expr(before), expr(after)

        lit = lambda s: expr(s.replace("{eos}", eos_mark))
        sys_pre, sys_post = around(self.system)
        user_pre, user_post = around(self.user)
        head = ("{{- bos_token -}}" if self.add_bos else "") + "{{- " + lit(self.prefix) + " -}}"
        default = ""
        if self.default_system:
            default = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
                       "{{- " + sys_pre + " + " + json.dumps(self.default_system, ensure_ascii=False) + " + "
                       + sys_post + " -}}{%- endif -%}")
        return (
            head + default
            + "{%- for message in messages -%}"
            + "{%- if message['role'] == 'system' -%}{{- " + sys_pre + " + message['content'] + " + sys_post + " -}}"
            + "{%- elif message['role'] == 'user' -%}{{- " + user_pre + " + message['content'] + " + user_post
            + " -}}"
            + "{%- elif message['role'] == 'assistant' -%}{{- " + lit(self.assistant_prefix)
            + " + message['content'] + " + lit(self.assistant_suffix) + " + " + lit(self.turn_separator) + " -}}"
            + "{%- else -%}{{- raise_exception('role must be system, user or assistant') -}}{%- endif -%}"
            + "{%- endfor -%}"
            + "{%- if add_generation_prompt -%}{{- " + lit(self.assistant_prefix) + " -}}{%- endif -%}"
        )


TEMPLATES: dict[str, ConversationTemplate] = {}


def join_segments(segments: list[tuple[str, bool]]) -> tuple[str, list[tuple[int, int]]]:
    """`(text, is_target)` segments -> the whole text and its targets' character ranges [a, b)."""
    text, spans = "", []
    for piece, is_target in segments:
        if is_target:
            spans.append((len(text), len(text) + len(piece)))
        text += piece
    return text, spans


def tokens_in_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token (character offsets from a fast tokenizer): whether it overlaps one of `spans`. A span that GPT-2's
    `trim_offsets` emptied (a run of spaces) lies at the end of the spaces it stands for."""
    return [any((s < b and e > a) if e > s else a < s <= b for a, b in spans) for s, e in offsets]


def register_template(template: ConversationTemplate) -> ConversationTemplate:
    if template.name == AUTO:
        raise ValueError(f"{AUTO!r} is reserved: it means the tokenizer's own chat template")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> ConversationTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)} (or {AUTO!r})")
    return TEMPLATES[name]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_template(name: str, tokenizer=None) -> ConversationTemplate:
    """The conversation template `name` means for `tokenizer`.

    `"auto"`: derived from `tokenizer.chat_template` when the tokenizer has one (see `template_from_chat_template`;
    a ValueError if it cannot be split into turns), else the registry's `plain` template (replies end with the
    tokenizer's EOS: the from-scratch ShapesWorld setting, which needs no added special strings). Any other name: the
    registry's template of that name.
    """
    if name != AUTO:
        return get_template(name)
    if tokenizer is not None and has_chat_template(tokenizer):
        return template_from_chat_template(tokenizer)
    return get_template(AUTO_FALLBACK)


# ----- deriving a ConversationTemplate from a tokenizer's jinja chat template -----
# Sentinel contents: plain words that no template filter (trim, capitalisation of roles, ...) changes.
_S, _U1, _A1, _U2, _A2 = "QZSYSTEMQZ", "QZUSERONEQZ", "QZASSISTANTONEQZ", "QZUSERTWOQZ", "QZASSISTANTTWOQZ"


class _CannotSplit(Exception):
    pass


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja's TemplateError, a template's raise_exception(...), ...
        roles = "/".join(m["role"] for m in messages)
        raise _CannotSplit(f"rendering a {roles} conversation raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(text, str):
        raise _CannotSplit(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not text")
    return text


def _split(text: str, sentinels: list[str]) -> list[str]:
    """`text` around `sentinels` (each exactly once, in order) -> the len(sentinels) + 1 pieces between them."""
    pieces, rest = [], text
    for s in sentinels:
        if text.count(s) != 1:
            raise _CannotSplit(f"a message's content appears {text.count(s)} times in the rendered text, not once")
        before, rest = rest.split(s)
        pieces.append(before)
    return [*pieces, rest]


def _escape(literal: str) -> str:
    """A literal as part of a `str.format` template (the system and user formats)."""
    return literal.replace("{", "{{").replace("}", "}}")


def _derive(tokenizer) -> ConversationTemplate:
    r = lambda msgs, gen=False: _render_chat(tokenizer, msgs, gen)
    u1, a1, u2, a2, s = _msg("user", _U1), _msg("assistant", _A1), _msg("user", _U2), _msg("assistant", _A2), \
        _msg("system", _S)

    # The generation prompt: what add_generation_prompt appends.
    one, one_gen = r([u1]), r([u1], True)
    if not one_gen.startswith(one) or one_gen == one:
        raise _CannotSplit("add_generation_prompt does not append an assistant header to the conversation")
    assistant_prefix = one_gen[len(one):]
    one_head, user_suffix = _split(one, [_U1])

    # Two exchanges, no system message: user prefix, assistant suffix, separator.
    m0, m1, m2, m3, m4 = _split(r([u1, a1, u2, a2]), [_U1, _A1, _U2, _A2])
    if m0 != one_head or m1 != user_suffix + assistant_prefix or m3 != m1:
        raise _CannotSplit("a user turn renders differently in a longer conversation (or the assistant header "
                           "differs from the generation prompt)")
    if not m2.startswith(m4):
        raise _CannotSplit("the text after a reply differs between the last reply and an earlier one")
    user_prefix = m2[len(m4):]
    assistant_suffix = m4.rstrip()
    turn_separator = m4[len(assistant_suffix):]
    if not assistant_suffix:
        raise _CannotSplit("a reply is not closed by an end-of-turn marker (nothing tells the model to stop)")
    if not m0.endswith(user_prefix):
        raise _CannotSplit("the first user turn does not start like the later ones")
    head = m0[: len(m0) - len(user_prefix)]  # text before the first user turn: a global prefix / default system

    # A system message.
    s0, s1, s2 = _split(r([s, u1]), [_S, _U1])
    if s2 != user_suffix or not s1.endswith(user_prefix):
        raise _CannotSplit("a system message changes how the user turn after it renders")
    system_suffix = s1[: len(s1) - len(user_prefix)]
    prefix, default_system = "", None
    if head:
        if head.startswith(s0) and head.endswith(system_suffix) and len(head) > len(s0) + len(system_suffix):
            default_system = head[len(s0): len(head) - len(system_suffix)]  # the template injects a system prompt
        elif s0.startswith(head):
            prefix = head  # text before every conversation (BOS, ...)
        else:
            raise _CannotSplit("the text before the first message is neither a fixed prefix nor a system turn")
    system_prefix = s0[len(prefix):]

    return ConversationTemplate(
        name=AUTO,
        system=_escape(system_prefix) + "{content}" + _escape(system_suffix),
        user=_escape(user_prefix) + "{content}" + _escape(user_suffix),
        assistant_prefix=assistant_prefix,
        assistant_suffix=assistant_suffix,
        turn_separator=turn_separator,
        stop=assistant_suffix,
        default_system=default_system,
        special_tokens=(assistant_suffix,),  # extend_vocabulary makes sure the stop string is one token
        prefix=prefix,
    )


# Conversations the derived template must render exactly as the chat template does (both with and without the
# generation prompt); contents with a newline and braces check that they pass through untouched.
_PROBE_ROLES = (("user",), ("system", "user"), ("user", "assistant"), ("system", "user", "assistant"),
                ("user", "assistant", "user"), ("system", "user", "assistant", "user"),
                ("user", "assistant", "user", "assistant"), ("system", "user", "assistant", "user", "assistant"))
_PROBE_TEXT = {"system": "Be brief {and} exact.\nAlways.", "user": "<image>\nWhat is {this}?",
               "assistant": "A red {circle}.\nDone."}


def _probes():
    for roles in _PROBE_ROLES:
        yield [_msg(role, f"{_PROBE_TEXT[role]} {i}") for i, role in enumerate(roles)]


def template_from_chat_template(tokenizer) -> ConversationTemplate:
    """Split `tokenizer.chat_template` into a ConversationTemplate (system / user formats, assistant prefix, reply
    end marker, separator, generation prompt, the default system prompt the template injects, a global prefix).

    The split is found by rendering sentinel conversations with `tokenizer.apply_chat_template`, then checked: the
    derived template must re-render single- and multi-turn conversations, with and without a system message and a
    generation prompt, byte-identically. Templates that render turns differently by position (Qwen3's thinking blocks
    on the last reply only, Mistral's system prompt folded into a user turn, ...) or trim contents cannot be
    represented: a ValueError says so, and to pick a registry template by name instead.
    """
    label = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not has_chat_template(tokenizer):
        raise ValueError(f"the text tokenizer {label!r} has no chat_template")
    eos = tokenizer.eos_token or ""
    try:
        template = _derive(tokenizer)
        for msgs in _probes():
            for gen in (False, True):
                expected = _render_chat(tokenizer, msgs, gen)
                if template.render(msgs, add_generation_prompt=gen, eos=eos) != expected:
                    roles = "/".join(m["role"] for m in msgs)
                    raise _CannotSplit(f"the derived turns do not re-render a {roles} conversation"
                                       f"{' with the generation prompt' if gen else ''} exactly")
    except _CannotSplit as exc:
        raise ValueError(
            f"the chat template of the text tokenizer {label!r} cannot be split into system/user/assistant turns "
            f"({exc}); pick a registry template by name instead of {AUTO!r} (UnifiedConfig.template, one of "
            f"{sorted(TEMPLATES)})"
        ) from None
    logger.debug("derived conversation template from %s's chat template: %s", label, template)
    return template


# Qwen-style chat models.
register_template(
    ConversationTemplate(
        name="chatml",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>",
        turn_separator="\n",
        stop="<|im_end|>",
        special_tokens=("<|im_start|>", "<|im_end|>"),
    )
)

# From-scratch models (ShapesWorld): no system prompt, replies end with the tokenizer's EOS.
register_template(
    ConversationTemplate(
        name="plain",
        system="{content}\n",
        user="USER: {content}\n",
        assistant_prefix="ASSISTANT: ",
        assistant_suffix="{eos}",
        turn_separator="\n",
        stop="{eos}",
    )
)

# LLaVA-1.5's conversation format for Vicuna v1.5 (LLaVA's `conv_vicuna_v1`): its system line, "USER: ... ASSISTANT:
# ...</s>", the Llama tokenizer's <s> once at the start (Llama-2 models degrade without it).
register_template(
    ConversationTemplate(
        name="vicuna_v1",
        system="{content} ",
        user="USER: {content} ",
        assistant_prefix="ASSISTANT: ",
        assistant_suffix="{eos}",
        turn_separator="",
        stop="{eos}",
        default_system="A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions.",
        add_bos=True,
    )
)
