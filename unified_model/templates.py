"""Conversation templates: how a list of chat messages becomes the text the LLM sees.

A template is chosen by name in `UnifiedConfig.template` (never guessed from the LLM's name). It renders a
conversation as a list of *segments* `(text, is_target)`: the assistant's replies (and the token that ends them) are
targets, everything else is context. The same segments feed training (label masks) and inference (prompt), so both
tokenize a conversation identically.

Every special string a template uses (`<|im_start|>`, ...) is listed in `special_tokens` and added to the text
tokenizer when the unified model is built, so any template works with any tokenizer (a from-scratch SentencePiece
one included). `{eos}` in a template stands for the tokenizer's end-of-sequence token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


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

    def segments(
        self, messages: list[dict], add_generation_prompt: bool = False, eos: str = ""
    ) -> list[tuple[str, bool]]:
        """Render `messages` ([{"role", "content"}]) as `(text, is_target)` segments.

        `add_generation_prompt=True` ends with the assistant prefix, ready for the model to answer.
        """
        sub = lambda s: s.replace("{eos}", eos)
        out: list[tuple[str, bool]] = []
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


TEMPLATES: dict[str, ConversationTemplate] = {}


def register_template(template: ConversationTemplate) -> ConversationTemplate:
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> ConversationTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


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
