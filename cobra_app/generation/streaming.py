"""UTF-8-safe incremental detokenization for streaming replies.

Byte-level BPE splits many characters (emoji, CJK) over several tokens. `tokenizers.decoders.DecodeStream` decodes a
sliding window of ids and holds text back while it ends with U+FFFD (an incomplete character), so a delta never ends
inside a character; `flush()` releases what is still held at the end.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerFast


class TextStreamer:
    """Feed token ids one at a time, get text deltas. Special tokens (EOS) decode to nothing.

    The deltas of all `put` calls plus `flush()` join to `tokenizer.decode(ids, skip_special_tokens=True)` as the
    backend decodes it (no `clean_up_tokenization_spaces`, which is not prefix-stable and so cannot stream).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self._backend = tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self.token_ids: list[int] = []
        self.text = ""  # emitted so far
        self.closed = False

    def put(self, token_id: int) -> str:
        """Add one token; return the newly complete text ("" while a character is still incomplete)."""
        if self.closed:
            raise RuntimeError("the stream was flushed; use a new TextStreamer")
        self.token_ids.append(token_id)
        delta = self._stream.step(self._backend, token_id) or ""
        self.text += delta
        return delta

    def flush(self) -> str:
        """End the stream and return the text held back (an incomplete character decodes to U+FFFD)."""
        self.closed = True
        full = self._backend.decode(self.token_ids, skip_special_tokens=True)
        assert full.startswith(self.text), "incremental decoding diverged from the full decoding"
        delta, self.text = full[len(self.text) :], full
        return delta
