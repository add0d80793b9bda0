"""Spec: the UI's actions, without a browser. Each returns what the page shows; failures become plain-words notices
and leave the user's input where it was."""

import itertools
import threading
import time

from PIL import Image

from cobra_app.ui.handlers import image_path
from cobra_app.ui.params import ParamValues
from tests.helpers import sample_image
from tests.ui.support import last

GREEDY = ParamValues(max_new_tokens=8)


def assistant_texts(chat):
    return [m["content"] for m in chat if m["role"] == "assistant" and not m.get("metadata")]


def speed_lines(chat):
    return [m["metadata"]["title"] for m in chat if m.get("metadata")]


def test_image_path_reads_the_raw_image_value():
    assert image_path({"path": "/tmp/gradio/x/a.png", "url": "http://h/file=..."}) == "/tmp/gradio/x/a.png"
    assert image_path("/tmp/a.png") == "/tmp/a.png"
    assert image_path(None) is None and image_path({"path": None, "url": None}) is None and image_path("") is None


# --- a conversation -------------------------------------------------------------------------------------------------
def test_send_streams_then_shows_the_speed_line_and_follow_ups_read_only_new_tokens(ui, png, notes):
    sid = ui.open_tab("browser-1")
    outputs = list(ui.send(png, "What is in the image?", sid, GREEDY))
    assert len(outputs) >= 3  # the user's message at once, then deltas, then the final chat
    first_sid, first_chat, box = outputs[0]
    assert first_sid == sid and box == "" and first_chat[0] == {"role": "user", "content": "What is in the image?"}
    assert first_chat[1] == {"role": "assistant", "content": ""}  # the reply in flight, empty at first
    _, chat, box = outputs[-1]
    assert box == "" and len(assistant_texts(chat)) == 1 and len(speed_lines(chat)) == 1
    line1 = speed_lines(chat)[0]
    assert "tokens in context" in line1 and "(constant)" in line1 and "to first token" in line1
    _, chat, _ = last(ui.send(png, "And what else?", sid, GREEDY))
    line2 = speed_lines(chat)[1]
    state = line1.split("state ")[1].split(" (constant)")[0]
    assert state == line2.split("state ")[1].split(" (constant)")[0]  # same state size, longer context
    read = int(line2.split("read ")[1].split(" ")[0])
    context = int(line2.split(" tokens in context")[0].split(" · ")[-1])
    # the follow-up read only what the stored state lacked (at most the last reply and its own turn), not the
    # conversation
    first_reply, second = ui.manager.registry.peek(sid).exchanges
    assert len(second.user_ids) <= read <= len(first_reply.reply_ids) + len(second.user_ids) < context
    assert notes.warnings == []


def test_regenerate_undo_clear_and_edit(ui, png, notes):
    sid = ui.open_tab()
    last(ui.send(png, "First question?", sid, GREEDY))
    last(ui.send(png, "Second question?", sid, GREEDY))
    _, chat = last(ui.regenerate(sid, ParamValues(max_new_tokens=8, temperature=1.5, greedy=False)))
    assert [m["content"] for m in chat if m["role"] == "user"] == ["First question?", "Second question?"]
    assert len(speed_lines(chat)) == 2 and "no prompt re-read" in speed_lines(chat)[1]  # decoded from saved state
    _, chat = last(ui.edit(0, [{"type": "text", "text": "Edited first?"}], sid, GREEDY))
    assert [m["content"] for m in chat if m["role"] == "user"] == ["Edited first?"]
    assert len(assistant_texts(chat)) == 1
    _, chat = last(ui.edit_turn(0, "Edited again?", sid, GREEDY))
    assert chat[0]["content"] == "Edited again?"
    _, chat, box = ui.undo(sid, "")
    assert chat == [] and box == "Edited again?"  # the undone message comes back to the textbox
    _, chat, box = ui.undo(sid, "draft")
    assert box == "draft" and notes.warnings == ["There is nothing to undo."]
    last(ui.send(png, "Third?", sid, GREEDY))
    assert ui.clear(sid)[1] == []
    assert ui.manager.history(sid) == []


def test_errors_are_notices_and_nothing_typed_is_lost(ui, png, notes, tmp_path):
    sid = ui.open_tab()
    assert last(ui.send(None, "Is there a cat?", sid, GREEDY))[2] == "Is there a cat?"
    assert "add an image" in notes.warnings[-1]
    assert last(ui.send(png, "   ", sid, GREEDY))[2] == "   "
    assert notes.warnings[-1] == "Please type a message first."
    assert last(ui.send(png, "Keep me", sid, ParamValues(8, "warm")))[2] == "Keep me"
    assert notes.warnings[-1] == "Temperature must be a number, not 'warm'."
    too_long = "word " * 400
    _, chat, box = last(ui.send(png, too_long, sid, GREEDY))
    assert box == too_long and chat == [] and "too long" in notes.warnings[-1]
    _, chat = last(ui.regenerate(sid, GREEDY))
    assert notes.warnings[-1] == "There is no reply to regenerate yet."
    _, chat = last(ui.edit(0, "x", sid, GREEDY))
    assert notes.warnings[-1] == "Only your own messages can be edited."
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    assert last(ui.send(str(corrupt), "Hello?", sid, GREEDY))[2] == "Hello?"
    assert "not an image Cobra can read" in notes.warnings[-1]
    assert all("Traceback" not in w and "Error" not in w for w in notes.warnings)


def test_a_model_failure_mid_reply_keeps_the_message_and_the_session_usable(ui, png, notes, monkeypatch):
    sid = ui.open_tab()
    last(ui.send(png, "Fine?", sid, GREEDY))
    llm = ui.manager.cobra.vlm.llm
    calls = {"n": 0}
    real_step = type(llm).step

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(type(llm), "step", failing_step)
    _, chat, box = last(ui.send(png, "Will this fail?", sid, GREEDY))
    assert box == "Will this fail?"
    assert notes.warnings[-1].startswith("Cobra failed while answering (a model error).")
    assert "CUDA" not in notes.warnings[-1]
    monkeypatch.undo()
    _, chat, box = last(ui.send(png, "And now?", sid, GREEDY))
    assert box == "" and chat[-3]["content"] == "And now?"


def test_image_changes_start_a_new_conversation_and_bad_files_keep_the_old_one(ui, png, notes, tmp_path):
    sid = ui.open_tab()
    sid, chat, shown = ui.set_image(png, sid)
    assert shown == png and chat == []
    last(ui.send(png, "Hi?", sid, GREEDY))
    assert ui.set_image(png, sid)[1] != []  # the same image again: the conversation continues
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"GIF89a garbage")
    sid, chat, shown = ui.set_image(str(bad), sid)
    assert shown == png and len(chat) == 3  # the previous image is shown again and the chat kept
    assert "not an image" in notes.warnings[-1]
    ui.set_image(str(bad), sid)  # Gradio reports one upload as two changes: one notice
    assert sum("not an image" in w for w in notes.warnings) == 1
    assert last(ui.send(str(bad), "Hi?", sid, GREEDY))[2] == "Hi?"  # sending it is refused out loud
    assert sum("not an image" in w for w in notes.warnings) == 2
    other = tmp_path / "b.png"
    sample_image(40, 40, seed=7).save(other)
    sid, chat, shown = ui.set_image(str(other), sid)
    assert chat == [] and shown == str(other)
    assert notes.infos[-1] == "New image: a new conversation has started."


def test_the_two_changes_of_one_bad_upload_warn_once_even_when_they_run_at_once(ui, notes, tmp_path, monkeypatch):
    """A served app runs the two change events of one upload on two workers; they once both warned (two toasts)."""
    both_warned = threading.Barrier(2)
    warn = notes.warning

    def slow_warning(message):  # a served app's notice takes a while (I/O): each event waits here for the other
        warn(message)
        try:
            both_warned.wait(timeout=0.5)
        except threading.BrokenBarrierError:  # the other event cannot get this far meanwhile
            pass

    monkeypatch.setattr(notes, "warning", slow_warning)
    sid = ui.open_tab()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not pixels")
    workers = [threading.Thread(target=ui.set_image, args=(str(bad), sid)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sum("not an image" in w for w in notes.warnings) == 1


def test_oversized_images_are_refused_before_decoding(ui, notes, tmp_path):
    sid = ui.open_tab()
    big = tmp_path / "big.png"
    Image.new("RGB", (2500, 2000), "white").save(big)  # 5 MP, above this fixture's 4 MP cap
    assert ui.set_image(str(big), sid)[2] is None
    assert notes.warnings[-1] == "The image is 2500x2000 pixels; the limit is 4 megapixels. Please upload a smaller image."


def test_probe_returns_two_probabilities_summing_to_one(ui, png, notes):
    sid = ui.open_tab()
    sid, probs, text = ui.probe(png, "Is there a cat in the image?", sid)
    assert set(probs) == {"Yes", "No"} and abs(sum(probs.values()) - 1) < 1e-6
    assert text == f"P(Yes) = {probs['Yes']:.4f} · P(No) = {probs['No']:.4f}"
    assert ui.probe(png, "  ", sid)[1] is None and "yes/no question" in notes.warnings[-1]
    assert ui.probe(None, "Is it?", sid)[1] is None and "add an image" in notes.warnings[-1]


def test_tabs_are_isolated_and_closed_on_unload(ui, manager, png, tmp_path):
    other = tmp_path / "other.png"
    sample_image(30, 30, seed=3).save(other)
    a, b = ui.open_tab("browser-a"), ui.open_tab("browser-b")
    assert a != b and len(a) >= 20
    last(ui.send(png, "Question from A?", a, GREEDY))
    last(ui.send(str(other), "Question from B?", b, GREEDY))
    assert [u for u, _ in manager.history(a)] == ["Question from A?"]
    assert [u for u, _ in manager.history(b)] == ["Question from B?"]
    ui.close_browser("browser-a")
    assert manager.stats()["sessions"] == 1
    # a tab whose session is gone gets a new one, and is told
    new_sid, chat, _ = last(ui.send(png, "Still there?", a, GREEDY))
    assert new_sid not in (a, b) and chat[0]["content"] == "Still there?"
    assert "new conversation has been started" in ui.notify.warnings[-1]


def test_stop_ends_the_reply_and_keeps_the_partial_text(ui, png):
    sid = ui.open_tab()
    stream = ui.send(png, "Tell me everything.", sid, ParamValues(max_new_tokens=150))
    next(stream), next(stream)
    ui.stop(sid)  # as the Stop button does, from another request while the reply streams
    _, chat, box = last(stream)
    assert box == "" and speed_lines(chat)[0].endswith(" · stopped")
    assert ui.manager.history(sid)[0][1] is not None
    ui.stop(sid)  # pressing Stop again, or with nothing in flight, is harmless


def test_abandoned_stream_is_closed_and_the_session_continues(ui, png):
    sid = ui.open_tab()
    stream = ui.send(png, "Long answer please.", sid, ParamValues(max_new_tokens=150))
    next(stream), next(stream)
    stream.close()  # the browser went away mid-reply
    assert ui.manager.history(sid)[0][1] is not None
    _, chat, box = last(ui.send(png, "Next?", sid, GREEDY))
    assert box == "" and [m["content"] for m in chat if m["role"] == "user"] == ["Long answer please.", "Next?"]


def test_a_streaming_reply_updates_the_chat_at_most_once_per_interval_its_first_text_at_once(manager, png, notes,
                                                                                               monkeypatch):
    """One update per token flooded a busy browser (it re-renders the whole reply each time), which then sent a Stop
    click seconds late (python -m cobra_app.bench.stop_latency)."""
    from cobra_app.ui.handlers import ChatHandlers

    llm = manager.cobra.vlm.llm
    real_step = type(llm).step

    def slow_step(self, *args, **kwargs):  # 10 ms per token
        time.sleep(0.01)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(type(llm), "step", slow_step)
    ui = ChatHandlers(manager, notifier=notes, stream_every_s=0.1)
    sid = ui.open_tab()
    ui.set_image(png, sid)
    started = time.monotonic()
    updates, chat = [], []
    for _, chat, _ in ui.send(png, "Tell me everything.", sid, ParamValues(max_new_tokens=60)):
        updates.append((time.monotonic() - started, chat[1]["content"]))
    assert updates[0][1] == ""  # the message at once, with an empty reply
    assert updates[1][1] and updates[1][0] < 0.1 + 0.2  # the first text as soon as it is there
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(updates[1:-1])]
    assert gaps and min(gaps) >= 0.1  # then at most one update per interval
    assert len(updates) <= 3 + (updates[-1][0] / 0.1)  # (not one per token: 60 tokens in ~0.6 s)
    assert assistant_texts(chat) == [ui.manager.history(sid)[0][1]] and len(speed_lines(chat)) == 1  # all of it


def test_a_long_reply_does_not_hold_up_another_users_short_one(ui, png, monkeypatch):
    import threading
    import time

    llm = ui.manager.cobra.vlm.llm
    real_step = type(llm).step

    def slow_step(self, *args, **kwargs):  # a slow model: 5 ms per token
        time.sleep(0.005)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(type(llm), "step", slow_step)
    a, b = ui.open_tab(), ui.open_tab()
    done = {}

    def run(name, sid, message, max_new_tokens):
        last(ui.send(png, message, sid, ParamValues(max_new_tokens)))
        done[name] = time.perf_counter()

    long_reply = threading.Thread(target=run, args=("long", a, "Tell me a long story.", 150))
    long_reply.start()
    time.sleep(0.1)  # the long reply is streaming
    run("short", b, "Short?", 3)
    long_reply.join()
    assert done["short"] < done["long"]  # replies interleave token by token: the short one was not queued behind
