"""ZeroGPU: every model call runs in a freshly forked child process (`tests.ui.forked_gpu`, the stand-in for
`spaces.GPU`), so nothing a call changes in memory survives it. A multi-turn chat with regenerate, undo, edit, a
probe and a stop through the UI handlers gives the very replies it gives in-process."""

import os

import pytest

from cobra_app.sessions import SessionManager
from cobra_app.ui.handlers import ChatHandlers
from cobra_app.ui.params import ParamValues
from tests.helpers import one_torch_thread, sample_image  # noqa: F401 - a fixture
from tests.sessions.support import full_recompute, state_rel_diff
from tests.ui.forked_gpu import ForkedGpu
from tests.ui.support import RecordingNotifier, last

GREEDY = ParamValues(max_new_tokens=10)
pytestmark = pytest.mark.usefixtures("one_torch_thread")



def transcript(chat) -> list[tuple[str, str]]:
    return [(m["role"], str(m["content"])) for m in chat if not m.get("metadata")]


def script(ui: ChatHandlers, image: str, other_image: str) -> list:
    """What a user does; returns (every chat, textbox and probe shown along the way, the session id)."""
    seen = []
    sid = ui.open_tab()
    seen.append(ui.set_image(image, sid)[1])
    for message in ("What is in the image?", "Is there a dog?", "Describe the picture."):
        _, chat, box = last(ui.send(image, message, sid, GREEDY))
        seen.append((transcript(chat), box))
    seen.append(transcript(last(ui.regenerate(sid, GREEDY))[1]))
    seen.append(transcript(ui.undo(sid, "")[1]))
    seen.append(transcript(last(ui.edit_turn(0, "What colour is it?", sid, GREEDY))[1]))
    seen.append(transcript(last(ui.send(image, "And then?", sid, GREEDY))[1]))
    seen.append(ui.probe(image, "Is there a cat?", sid)[1])
    stream = ui.send(image, "Tell me a long story.", sid, ParamValues(max_new_tokens=40))
    next(stream), next(stream), next(stream)
    ui.stop(sid)
    seen.append(transcript(last(stream)[1]))
    seen.append(transcript(last(ui.send(image, "Go on.", sid, GREEDY))[1]))
    seen.append(transcript(ui.set_image(other_image, sid)[1]))
    seen.append(transcript(last(ui.send(other_image, "What now?", sid, GREEDY))[1]))
    return seen, sid


def test_a_chat_whose_model_calls_each_run_in_a_forked_process_replies_as_in_process(tiny_cobra, tmp_path):
    images = []
    for seed in (1, 2):
        images.append(str(tmp_path / f"{seed}.png"))
        sample_image(48, 40, seed=seed).save(images[-1])
    # every token an update (stream_every_s=0): the script stops a reply after its third update
    in_process = ChatHandlers(SessionManager(tiny_cobra), notifier=RecordingNotifier(), stream_every_s=0)
    expected, _ = script(in_process, *images)
    forked = ForkedGpu()
    manager = SessionManager(tiny_cobra, gpu_call=forked)
    notes = RecordingNotifier()
    got, sid = script(ChatHandlers(manager, notifier=notes, stream_every_s=0), *images)
    assert got == expected and notes.warnings == []
    assert len(forked.pids) >= 12 and os.getpid() not in forked.pids  # every model call ran in a child
    # the states the children returned are the caller's now: the conversation goes on from them, exactly
    _, reference = full_recompute(tiny_cobra, sample_image(48, 40, seed=2), manager.token_ids(sid))
    assert state_rel_diff(manager.snapshot(sid).state, reference) < 1e-5
    assert manager.stats()["replies_in_flight"] == 0
