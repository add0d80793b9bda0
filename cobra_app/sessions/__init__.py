"""Conversation sessions: image embeddings and Mamba state kept across turns (see `manager` for the API)."""

from cobra_app.sessions.errors import (
    ContextFull,
    EmptyMessage,
    NoSuchTurn,
    ReplyInProgress,
    SessionError,
    SessionNotFound,
)
from cobra_app.sessions.manager import DEFAULT_MEMORY_BUDGET, SessionManager
from cobra_app.sessions.memory import MemoryStore, measure_nbytes
from cobra_app.sessions.protocol import SessionModel
from cobra_app.sessions.reply import Reply, ReplyStats
from cobra_app.sessions.session import Exchange, Session, Snapshot, image_key

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ContextFull",
    "EmptyMessage",
    "Exchange",
    "MemoryStore",
    "NoSuchTurn",
    "Reply",
    "ReplyInProgress",
    "ReplyStats",
    "Session",
    "SessionError",
    "SessionManager",
    "SessionModel",
    "SessionNotFound",
    "Snapshot",
    "image_key",
    "measure_nbytes",
]
