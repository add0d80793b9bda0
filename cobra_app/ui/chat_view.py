"""What the page shows, as plain values: the chat (Gradio's messages format) rendered from a session's history with
the speed line under each reply, the model panel's table, and the reading of chat values sent back by the page.

Chat values: [{"role": "user" | "assistant", "content": str, "metadata": {...}}]; a speed line is an assistant
message whose `metadata.title` holds it.
"""

from __future__ import annotations

from cobra_app.sessions import ReplyStats

Message = dict
EMPTY_REPLY = "(no answer: the reply was stopped before its first word)"
FINISH_NOTES = {"length": "stopped at the max new tokens limit", "stopped": "stopped", "context": "context full",
                "error": "failed"}


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n} B"


def format_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_speed(stats: ReplyStats) -> str:
    """One line: time to first token, tokens/s, what this turn read, tokens in context, the (constant) state size."""
    parts = [f"⚡ {stats.ttft_s:.2f} s to first token"]
    if stats.new_tokens > 1:
        parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
    parts.append(f"{stats.new_tokens} new tokens")
    read = f"read {stats.prefill_tokens} new prompt tokens" if stats.prefill_tokens else "no prompt re-read"
    if stats.rebuilt_tokens:
        read += f" (+{stats.rebuilt_tokens} rebuilt)"
    parts.append(read)
    parts.append(f"{stats.context_tokens} tokens in context")
    parts.append(f"state {format_bytes(stats.state_bytes)} (constant)")
    if stats.finish_reason in FINISH_NOTES:
        parts.append(FINISH_NOTES[stats.finish_reason])
    return " · ".join(parts)


def speed_message(line: str) -> Message:
    return {"role": "assistant", "content": "", "metadata": {"title": line, "status": "done"}}


def render_chat(history: list[tuple[str, str | None]], speeds: list[str | None] | None = None,
                partial: str | None = None) -> list[Message]:
    """A session's history -> chat messages. A reply of None (in flight) shows `partial`; each finished reply is
    followed by its speed line when known."""
    speeds = speeds or []
    messages: list[Message] = []
    for i, (user, reply) in enumerate(history):
        messages.append({"role": "user", "content": user})
        if reply is None:
            if partial is not None:
                messages.append({"role": "assistant", "content": partial})
            continue
        messages.append({"role": "assistant", "content": reply if reply.strip() else EMPTY_REPLY})
        if i < len(speeds) and speeds[i]:
            messages.append(speed_message(speeds[i]))
    return messages


def user_turn_index(messages: list[Message], message_index: int) -> int | None:
    """Position in the chat -> the 0-based turn of that user message (None if it is not a user message)."""
    if not 0 <= message_index < len(messages) or messages[message_index].get("role") != "user":
        return None
    return sum(1 for m in messages[:message_index] if m.get("role") == "user")


def message_text(content) -> str:
    """Text of a chat message's content in any of Gradio's shapes (str, [{"type": "text", "text": ...}], dict)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return str(content)


def model_info_markdown(info: dict, requested: str | None = None) -> str:
    """The model panel: a two-column table of `Cobra.info()`; `requested` names a model that could not be loaded."""
    rows = [("Model", f"`{info['model_id']}`"), ("Loaded from", f"`{info['source']}`"),
            ("Device", f"`{info['device']}`"), ("Weights dtype", f"`{info['dtype']}`"),
            ("Compute dtype", f"`{info['compute_dtype']}`: {info['precision']}"),
            ("Parameters", f"{format_count(int(info['parameters']))} ({int(info['parameters']):,})"),
            ("Mamba ops", f"`{info['ops']}`" + (f"; CPU kernels {info['cpu_kernels']}" if info["cpu_kernels"] else "")),
            ("Conversation state", f"{format_bytes(int(info['state_bytes']))}, whatever the conversation's length")]
    if requested and requested != info["source"]:
        rows.insert(1, ("Requested", f"`{requested}` (unavailable)"))
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
