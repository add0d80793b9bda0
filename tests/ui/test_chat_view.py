"""Spec: what the page shows, as plain values: the chat rendered from a session's history, the speed line under each
reply, the model panel, and chat values read back from the page."""

from cobra_app.sessions import ReplyStats
from cobra_app.ui.chat_view import (
    EMPTY_REPLY,
    format_bytes,
    format_speed,
    message_text,
    model_info_markdown,
    render_chat,
    user_turn_index,
)


def test_render_chat_shows_replies_speed_lines_and_the_reply_in_flight():
    chat = render_chat([("hi", "hello"), ("more?", None)], ["⚡ fast"], partial="wor")
    assert [m["role"] for m in chat] == ["user", "assistant", "assistant", "user", "assistant"]
    assert chat[2]["metadata"]["title"] == "⚡ fast" and chat[2]["content"] == ""
    assert chat[4]["content"] == "wor"
    assert render_chat([("q", "")])[1]["content"] == EMPTY_REPLY
    assert user_turn_index(chat, 3) == 1 and user_turn_index(chat, 0) == 0
    assert user_turn_index(chat, 1) is None and user_turn_index(chat, 99) is None


def test_message_text_reads_every_gradio_content_shape():
    assert message_text("a") == "a"
    assert message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert message_text({"text": "c"}) == "c" and message_text(None) == ""


def test_speed_line_and_model_info_name_what_users_need():
    line = format_speed(ReplyStats(ttft_s=0.123, tokens_per_s=45.6, new_tokens=12, prefill_tokens=9,
                                   context_tokens=321, state_bytes=26_214_400, finish_reason="eos"))
    assert line == ("⚡ 0.12 s to first token · 45.6 tokens/s · 12 new tokens · read 9 new prompt tokens · "
                    "321 tokens in context · state 26.2 MB (constant)")
    assert format_bytes(999) == "999 B" and format_bytes(6144) == "6.1 kB"
    md = model_info_markdown({"model_id": "m", "source": "s", "device": "cpu", "dtype": "bfloat16",
                              "compute_dtype": "float32", "precision": "bf16 matmul slow here", "parameters": 3_500_000_000,
                              "ops": "torch", "cpu_kernels": "building in the background", "state_bytes": 26_214_400},
                             "cobra+3b")
    for text in ("`m`", "`cpu`", "`bfloat16`", "`float32`: bf16 matmul slow here", "3.50B", "`torch`",
                 "CPU kernels building in the background", "26.2 MB", "`cobra+3b` (unavailable)"):
        assert text in md
