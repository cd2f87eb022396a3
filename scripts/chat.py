"""`vqrae chat`: a multi-turn conversation with a unified model, with images both ways.

Ask about attached images; ask for a drawing (a model trained to draw answers with an image by itself) or force one
with `/draw`, then ask about it: the drawing stays in the conversation as the model drew it (`<boi>`, its codes,
`<eoi>`). What you type is escaped: it never becomes an `<image>` or any other special token. Reads lines from
stdin, so it also runs from a pipe (then without the `> ` prompt).

Replies are printed with control characters escaped (`printable`): an untrained or broken model samples any byte,
and a raw ESC or carriage return would rewrite the terminal. A model whose `training_history` records no training
on conversations gets a one-line warning at start: its replies are noise, not a bug of the command.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path

from vqrae.cli import CLIError
from vqrae.cli.generate import add_draw_arguments, add_model_arguments, draw_settings, load_model

HELP = """commands:
  /image PATH    attach an image to your next message
  /draw PROMPT   generate an image (saved, path printed); it joins the conversation
  /reset         start a new conversation
  /save FILE     write the transcript (messages, image files, drawings with their codes) as JSON
  /help          this help
  /quit          leave (also Ctrl-D)
anything else is a message to the model."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="talk with a unified model: ask about images, draw images, discuss what was drawn",
        description="Multi-turn chat with streamed answers. " + HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--image", action="append", default=[], help="attach an image to the first message (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit (default: the model's, 256)")
    p.add_argument("--temperature", type=float, default=None, help="answer temperature (default: the model's, 0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="answer top-k (0 = off; default: the model's)")
    p.add_argument("--top-p", type=float, default=None, help="answer top-p in (0, 1] (default: the model's)")
    add_draw_arguments(p, prefix="draw-")
    p.add_argument("--seed", type=int, default=0, help="seed of the first /draw (then +1 per drawing)")
    p.add_argument("--out-dir", default="runs/chat", help="where /draw saves images (default runs/chat)")
    p.add_argument("--demo", action="store_true",
                   help="instead of reading the terminal, run the scripted demo on a held-out ShapesWorld image (three "
                        "questions, a drawing request, a question about the drawing), checked against the ground "
                        "truth; writes transcript.md and demo.json to --out-dir")
    p.set_defaults(func=run)


def _error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


# Bidirectional embeddings, overrides and isolates (Unicode format characters): they reorder what a terminal shows.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters (C0, DEL, C1: ESC sequences, carriage return, bell, ...)
    and bidirectional overrides are shown escaped (`\\x1b`, `\\u202e`); newline and tab are kept."""
    def shown(ch: str) -> str:
        if ch in "\n\t" or not (unicodedata.category(ch) == "Cc" or ch in _BIDI):
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return "".join(map(shown, text))


def training_warning(model) -> str | None:
    """A one-line warning when the model's `training_history` (a list of {"stage", "steps", "tasks"}) does not
    record any training on conversations, else None."""
    history = getattr(model, "training_history", None)
    if not history:
        return ("warning: this model was never trained on conversations (it records no training history): "
                "expect its replies to be noise")
    entries = [e for e in history if isinstance(e, dict)]
    if any("conversation" in (e.get("tasks") or ()) for e in entries):
        return None
    done = "; ".join(f"{e.get('stage', '?')}: {', '.join(map(str, e.get('tasks') or ())) or 'no tasks'}"
                     for e in entries) or "nothing"
    return (f"warning: this model was never trained on conversations (its training: {done}): "
            f"expect its replies to be noise")


def run_demo(model, args: argparse.Namespace) -> int:
    from vqrae.eval.chat_demo import scripted_chat

    result = scripted_chat(model, args.out_dir, seed=args.seed)
    for t in result["turns"]:
        print(f"> {printable(t['question'])}")
        shown = printable(t["answer"]) + (f" (drew {t['image']})" if t.get("image") else "")
        verdict = "right" if t["correct"] else "wrong"
        print(f"{shown}    [{verdict}{', truth: ' + t['truth'] if 'truth' in t else ''}]")
    print(f"{result['answers_correct']}/3 answers right, drew by itself: {result['drew_by_itself']}, drawing right: "
          f"{result['drawing_correct']}, question about the drawing right: {result['followup_correct']}; "
          f"transcript: {Path(args.out_dir) / 'transcript.md'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from vqrae.unified_model import validate_sampling
    from vqrae.unified_model.chat import ChatSession

    validate_sampling(**{k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k),
                                          ("top_p", args.top_p)) if v is not None})
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    draw = draw_settings(args, prefix="draw_")
    # None: the model's default (sampling_config.json)
    answer = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
              "top_p": args.top_p, "seed": args.seed}
    model = load_model(args)
    if args.demo:
        return run_demo(model, args)
    session = ChatSession(model, out_dir=args.out_dir, answer=answer, draw=draw, seed=args.seed)
    for path in args.image:
        session.attach(path)  # a bad --image fails the command (exit 2)
    warning = training_warning(model)
    if warning:
        print(f"vqrae chat: {warning}", file=sys.stderr, flush=True)

    interactive = sys.stdin.isatty()
    out = sys.stdout
    if interactive:
        print("vqrae chat: type a message, /help for commands, /quit to leave.")
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and line == "":
            break  # end of the pipe
        line = line.strip()
        if not line:
            continue
        cmd, _, arg = line.partition(" ") if line.startswith("/") else ("", "", line)
        arg = arg.strip()
        try:
            if cmd in ("/quit", "/exit"):
                break
            elif cmd == "/help":
                print(HELP, file=out)
            elif cmd == "/reset":
                session.reset()
                print("(conversation cleared)", file=out)
            elif cmd == "/image":
                if not arg:
                    raise ValueError("/image needs a path")
                session.attach(arg)
                print(f"(attached {arg})", file=out)
            elif cmd == "/draw":
                path = session.draw(arg)
                print(f"(drew {path})", file=out)
            elif cmd == "/save":
                if not arg:
                    raise ValueError("/save needs a file name")
                print(f"(saved {session.save(arg)})", file=out)
            elif cmd:
                raise ValueError(f"unknown command {cmd}; /help lists them")
            else:
                for piece in session.ask(arg):  # text, or the path of an image the model drew by itself
                    out.write(printable(piece) if isinstance(piece, str) else f"\n(drew {piece})\n")
                    out.flush()
                out.write("\n")
                out.flush()
        except (ValueError, OSError) as exc:  # a bad line must not end the conversation
            _error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return 0
