"""Prompt builders: the exact turn strings of the released Cobra prompt formats (reference section 6).

A turn template holds `{msg}` where the (cleaned) message goes. Its only control token is EOS (`<|endoftext|>`);
everything else, `<|user|>` and `<|assistant|>` included, is ordinary text. A turn is therefore a list of plain-text
parts joined by EOS, which is how `TurnTokenizer` keeps user-typed control tokens as text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

EOS = "<|endoftext|>"
IMAGE_PLACEHOLDER = "<image>"


CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0, DEL and C1, except tab and newline


def clean_text(text: str) -> str:
    """Typed text -> the text the model reads: valid Unicode without control characters. Surrogate pairs sent as two
    code points (JSON's "\\ud83d\\ude00") are joined and unpaired surrogates (which no UTF-8 encoder accepts) become
    U+FFFD; line ends (CR LF, CR) become newlines; the other C0 and C1 control characters and DEL are removed, tab
    and newline kept. Format characters (zero-width space, BOM, bidi marks) are not controls and stay."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return CONTROL_CHARACTERS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def clean_message(msg: str) -> str:
    """A message as the prompt holds it: `clean_text`, then the release's cleaning (drop `<image>`: images go before
    all text; strip whitespace). Every message and reply enters the prompt through here."""
    return clean_text(msg).replace(IMAGE_PLACEHOLDER, "").strip()


def _fill(template: str, msg: str) -> list[str]:
    """Split `template` at EOS and put `msg` into `{msg}`. `msg` is inserted, never parsed as a template."""
    return [part.replace("{msg}", msg) for part in template.split(EOS)]


@dataclass(frozen=True)
class PromptBuilder:
    """A chat format. Later user turns are `turn_separator + user_template`; an empty reply is a single space."""

    name: str
    user_template: str
    assistant_template: str = "{msg}" + EOS
    turn_separator: str = "\n"

    def user_parts(self, msg: str, first: bool) -> list[str]:
        """Plain-text parts of a user turn; the turn is `EOS.join(parts)`."""
        template = self.user_template if first else self.turn_separator + self.user_template
        return _fill(template, clean_message(msg))

    def assistant_parts(self, reply: str) -> list[str]:
        """Plain-text parts of an assistant turn; the turn is `EOS.join(parts)`."""
        return _fill(self.assistant_template, clean_message(reply) or " ")

    def user_text(self, msg: str, first: bool) -> str:
        return EOS.join(self.user_parts(msg, first))

    def assistant_text(self, reply: str) -> str:
        return EOS.join(self.assistant_parts(reply))

    def conversation_text(self, exchanges: Sequence[tuple[str, str | None]]) -> str:
        """The whole conversation from (user message, reply) pairs; only the last reply may be `None` (the prompt for
        generation)."""
        pieces = []
        for i, (msg, reply) in enumerate(exchanges):
            pieces.append(self.user_text(msg, first=i == 0))
            if reply is not None:
                pieces.append(self.assistant_text(reply))
            elif i != len(exchanges) - 1:
                raise ValueError(f"exchange {i} has no reply but is not the last one")
        return "".join(pieces)


PROMPT_BUILDERS: dict[str, PromptBuilder] = {
    b.name: b
    for b in (
        PromptBuilder("zephyr", user_template="<|user|>\n{msg}" + EOS + "\n<|assistant|>\n"),  # mamba-2.8b-zephyr
        PromptBuilder("mamba", user_template="In: {msg}\nOut: "),  # base Mamba
    )
}


def get_prompt_builder(name: str) -> PromptBuilder:
    """Look up a builder by prompt format name (`CobraConfig.prompt_format`)."""
    try:
        return PROMPT_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; known: {sorted(PROMPT_BUILDERS)}") from None
