"""Per-turn tokenization, as the release trained: each turn's string is tokenized on its own, ids concatenated.

Messages are always plain text: a user typing `<|endoftext|>` gets the ids of those characters, never EOS. Only the
template's own EOS positions get the EOS id. Each plain-text part is encoded with the tokenizer's special tokens
disabled (`tokenizers.Tokenizer.encode_special_tokens`); a whole-string encoding splits at special tokens first, so
for ordinary text both give identical ids. Non-special added tokens (GPT-NeoX's runs of spaces) still match, as in
the release. No BOS is added.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from cobra_app.prompting.builders import EOS, PromptBuilder


class TurnTokenizer:
    """Token ids of user and assistant turns for one tokenizer and prompt format."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, builder: PromptBuilder):
        self.tokenizer, self.builder = tokenizer, builder
        # A private copy with special tokens disabled: the shared tokenizer's flags are toggled per call by
        # transformers, so flipping them there would race with other threads.
        self._plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._plain.encode_special_tokens = True
        self._plain.no_padding()
        self._plain.no_truncation()
        eos = self._plain.token_to_id(EOS)
        if eos is None or eos in self.text_ids(EOS):
            raise ValueError(f"the tokenizer must have {EOS!r} as a special token (typed text must not produce it)")
        self.eos_id: int = eos

    def text_ids(self, text: str) -> list[int]:
        """Encode `text` as plain text: special tokens typed in it stay characters. No BOS/EOS added."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def _parts_ids(self, parts: list[str]) -> list[int]:
        """Plain-text parts joined by EOS -> ids."""
        ids = self.text_ids(parts[0])
        for part in parts[1:]:
            ids += [self.eos_id, *self.text_ids(part)]
        return ids

    def user_turn_ids(self, msg: str, first: bool) -> list[int]:
        """Ids of a user turn (ends with the assistant header, ready for generation)."""
        return self._parts_ids(self.builder.user_parts(msg, first))

    def assistant_turn_ids(self, reply: str) -> list[int]:
        """Ids of an assistant turn: the reply's text, then EOS."""
        return self._parts_ids(self.builder.assistant_parts(reply))

    def answer_token_id(self, word: str) -> int:
        """The single token of a closed-set answer word (e.g. "Yes"); ValueError if the word is not one token."""
        ids = self.text_ids(word)
        if len(ids) != 1:
            raise ValueError(f"answer {word!r} is {len(ids)} tokens {ids}, not one; closed-set scoring needs one token")
        return ids[0]
