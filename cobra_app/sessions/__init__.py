"""Conversation sessions: image embeddings and Mamba state kept across turns (see `manager` for the API)."""

from cobra_app.sessions.errors import (
    ContextFull,
    EmptyMessage,
    NoSuchTurn,
    ReplyInProgress,
    SessionError,
    SessionNotFound,
)
from cobra_app.sessions.manager import DEFAULT_MEMORY_BUDGET, Reply, ReplyStats, SessionManager
from cobra_app.sessions.memory import MemoryStore, measure_nbytes
from cobra_app.sessions.session import Session, Snapshot, Turn, image_key

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ContextFull",
    "EmptyMessage",
    "MemoryStore",
    "NoSuchTurn",
    "Reply",
    "ReplyInProgress",
    "ReplyStats",
    "Session",
    "SessionError",
    "SessionManager",
    "SessionNotFound",
    "Snapshot",
    "Turn",
    "image_key",
    "measure_nbytes",
]
