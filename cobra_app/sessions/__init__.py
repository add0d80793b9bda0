"""Conversation sessions: image embeddings and Mamba states kept across turns, by content (see `manager` for the
API, `engine` for a reply's life, `store` for the state store)."""

from cobra_app.sessions.errors import (
    BadConversation,
    ContextFull,
    EmptyMessage,
    NoSuchTurn,
    ReplyInProgress,
    SessionError,
    SessionNotFound,
)
from cobra_app.sessions.keys import image_key, prefix_keys
from cobra_app.sessions.manager import DEFAULT_MEMORY_BUDGET, DEFAULT_STATE_DIR_BYTES, SessionManager
from cobra_app.sessions.memory import MemoryStore, measure_nbytes
from cobra_app.sessions.protocol import SessionModel
from cobra_app.sessions.reply import Reply, ReplyStats
from cobra_app.sessions.session import HISTORY_MODES, Exchange, HistoryMode, Session
from cobra_app.sessions.snapshot import Snapshot

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_STATE_DIR_BYTES",
    "HISTORY_MODES",
    "BadConversation",
    "ContextFull",
    "EmptyMessage",
    "Exchange",
    "HistoryMode",
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
    "prefix_keys",
]
