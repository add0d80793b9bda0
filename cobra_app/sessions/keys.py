"""Content keys of conversation states: what a state is, not whose it is.

The key of the state after reading `ids` on top of an image is the running BLAKE2b digest of the stream

    model identity | image content hash (or "no image") | ids[0] | ids[1] | ...      (each id 4 bytes, little-endian)

taken after the last id: a hash chain over the tokens, so it depends only on the model, the image and the token ids
read so far, never on who read them or on how they were cut into turns. Two conversations that read the same image
and the same ids (two users asking the same first question, an API client resending a conversation the UI had) meet
at the same keys; `prefix_keys` gives every prefix's key in one pass (O(len(ids))), which is how the longest cached
prefix of a request is found. Keys are 32 hex digits (128 bits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from PIL import Image

KEY_FORMAT = b"cobra-chat-state-key/1"


def image_key(image: Image.Image | None) -> str | None:
    """Content hash of an image (mode, size and pixels): equal images share embeddings and states."""
    if image is None:
        return None
    h = hashlib.sha256()
    h.update(f"{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def prefix_keys(identity: str, image: str | None, ids: Sequence[int]) -> list[str]:
    """[key after 0 ids (the image prefix, or the empty start), key after ids[:1], ..., key after all ids]."""
    h = hashlib.blake2b(KEY_FORMAT, digest_size=16)
    h.update(f"|{identity}|{image or 'no image'}|".encode())
    keys = [h.hexdigest()]
    for i in ids:
        h.update(int(i).to_bytes(4, "little"))
        keys.append(h.hexdigest())
    return keys
