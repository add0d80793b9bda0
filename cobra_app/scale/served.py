"""What one replica serves: the session manager over its loaded model (stateless completions, probes), and its state
store as state mobility reads and fills it.

    build_served_model(cfg, threads)   loads the model (with the app's offline fallback) in the replica's process
    ServedModel.card()                 ModelCard: what the ingress and the UI need (model id, info, tokenizer, banner)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from PIL import Image

from cobra_app.generation import SamplingParams
from cobra_app.scale.messages import ModelCard, StateFound
from cobra_app.scale.mobility import RequestKeys
from cobra_app.sessions import Reply, SessionManager, Snapshot, image_key


def _snapshot_to(snap: Snapshot, device: torch.device | str) -> Snapshot:
    state = None if snap.state is None else snap.state.to(device)
    logits = None if snap.logits is None else snap.logits.to(device)
    return Snapshot(state, logits, snap.text_tokens)


class ServedModel:
    """A `ChatModel` (see `replica`) over a SessionManager."""

    def __init__(self, manager: SessionManager, banner: str = ""):
        self.manager, self.banner = manager, banner
        self.store = manager.store

    def card(self) -> ModelCard:
        cobra = self.manager.cobra
        return ModelCard(cobra.config.model_id, cobra.info(), cobra.tokenizer, self.banner)

    def complete(self, image: Image.Image | None, messages: Sequence[tuple[str, str]],
                 params: SamplingParams | None = None, *, top_logprobs: int | None = None) -> Reply:
        return self.manager.complete(image, messages, params, top_logprobs=top_logprobs)

    def score(self, image: Image.Image | None, question: str, answers: str = "yes-no") -> dict[str, float]:
        """A closed-set probe of a single-turn question (a session of its own, closed at once)."""
        sid = self.manager.open_session()
        try:
            self.manager.set_image(sid, image)
            return self.manager.score(sid, question, answers)
        finally:
            self.manager.close_session(sid)

    def stats(self) -> dict:
        return self.manager.stats()

    # --- LocalStates ------------------------------------------------------------------------------------------------
    def request_keys(self, image: Image.Image | None, messages: Sequence[tuple[str, str]]) -> RequestKeys:
        """Every prefix key of the request's prompt, longest first. The previous turn stored states from the start
        of its reply on (before the reply, and after all of it but its last token): `resume` indexes that start."""
        ids = self.manager.conversation_ids(messages)
        keys = self.manager.engine.keys(image_key(image), ids)[::-1]
        if len(messages) < 3:
            return RequestKeys(tuple(keys), None)
        reply_start = len(self.manager.conversation_ids(messages[:-2]))
        return RequestKeys(tuple(keys), len(ids) - reply_start)

    def longest_in_memory(self, keys: Sequence[Hashable]) -> int | None:
        return next((i for i, key in enumerate(keys) if key in self.store.memory), None)

    def longest_on_disk(self, keys: Sequence[Hashable]) -> int | None:
        disk = self.store.disk
        if disk is None:
            return None
        disk.rescan()  # the files other replicas wrote since this one started
        return next((i for i, key in enumerate(keys) if key in disk), None)

    def export(self, keys: Sequence[Hashable]) -> StateFound | None:
        for key in keys:
            snap = self.store.memory.peek(key)
            if snap is not None:
                return StateFound(key, _snapshot_to(snap, "cpu"))
        return None

    def adopt(self, found: StateFound) -> None:
        self.store.memory.put(found.key, _snapshot_to(found.state, self.manager.cobra.device))


def build_served_model(cfg, threads: int) -> ServedModel:
    """Load the model of `cfg` (an AppConfig) in this process, with `threads` intra-op threads."""
    from cobra_app.serving.model_choice import choose_model, start_cpu_kernels
    from cobra_app.serving.sessions import session_manager

    torch.set_num_threads(threads)
    start_cpu_kernels(cfg.device)  # as the app: PyTorch ops serve until the kernels are built, no compile first
    choice = choose_model(cfg.model, cfg.fallback_model, device=cfg.device, dtype=cfg.dtype, llm=cfg.llm,
                          vision=cfg.vision_weights)
    return ServedModel(session_manager(cfg, choice.cobra), choice.banner())
