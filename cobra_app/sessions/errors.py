"""Session errors. Each carries `.user_message`: plain words a UI can show as is (str(error) is for logs)."""

from __future__ import annotations


class SessionError(Exception):
    """Base class. `user_message` is meant for the person chatting; the exception text for developers."""

    default_user_message = "Something went wrong with this conversation."

    def __init__(self, detail: str = "", user_message: str | None = None):
        self.user_message = user_message or self.default_user_message
        super().__init__(detail or self.user_message)


class SessionNotFound(SessionError):
    """The session id is unknown: never opened, closed, or expired after the idle timeout (`.reason` says which:
    "unknown", "closed" or "expired")."""

    default_user_message = "This conversation is no longer available. Please start a new conversation."

    def __init__(self, detail: str = "", user_message: str | None = None, reason: str = "unknown"):
        super().__init__(detail, user_message)
        self.reason = reason


class ReplyInProgress(SessionError):
    """A reply is still being generated in this session (at most one at a time)."""

    default_user_message = "Cobra is still answering in this conversation. Wait for the reply to finish or stop it."


class ContextFull(SessionError):
    """The conversation (or the message alone) does not fit in the model's context length."""

    default_user_message = "This conversation has reached the model's context limit. Please start a new conversation."


class EmptyMessage(SessionError):
    """The message is empty once cleaned (whitespace and `<image>` removed)."""

    default_user_message = "Please type a message."


class NoSuchTurn(SessionError):
    """The turn to edit, regenerate or undo does not exist."""

    default_user_message = "There is no such message in this conversation."


class BadConversation(SessionError):
    """A conversation sent whole (`SessionManager.complete`) is not user/assistant messages alternating, starting
    and ending with the user."""

    default_user_message = ("The messages must alternate between the user and the assistant, starting and ending "
                            "with a user message.")
