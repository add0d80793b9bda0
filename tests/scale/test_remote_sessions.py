"""The page's sessions over a model served elsewhere (`RemoteSessions`): each reply is one stateless `complete` with
the whole conversation, and the page behaves as over a local SessionManager. A local SessionManager's `complete`
stands in for the deployment here (the Ray path: tests/scale/test_scale_out.py)."""

import pytest

from cobra_app.generation import SamplingParams
from cobra_app.scale.messages import ModelCard
from cobra_app.scale.remote_sessions import RemoteSessions
from cobra_app.sessions import EmptyMessage, NoSuchTurn, ReplyInProgress, SessionManager
from cobra_app.ui.handlers import ChatHandlers
from cobra_app.ui.params import ParamValues
from tests.ui.support import RecordingNotifier, last

GREEDY = SamplingParams(max_new_tokens=8)
SAMPLED = SamplingParams(max_new_tokens=8, greedy=False, temperature=1.3, seed=7)


class Served:
    """The deployment as the page sees it: `complete` and `score` of a SessionManager in 'another process'."""

    def __init__(self, cobra):
        self.manager = SessionManager(cobra)
        self.calls = []

    def complete(self, image, messages, params=None, *, top_logprobs=None):
        self.calls.append(list(messages))
        return self.manager.complete(image, messages, params, top_logprobs=top_logprobs)

    def score(self, image, question, answers):
        sid = self.manager.open_session()
        self.manager.set_image(sid, image)
        try:
            return self.manager.score(sid, question, answers)
        finally:
            self.manager.close_session(sid)


def remote(cobra) -> tuple[RemoteSessions, Served]:
    served = Served(cobra)
    card = ModelCard(cobra.config.model_id, cobra.info(), cobra.tokenizer, "")
    return RemoteSessions(served, card, served.score), served


def drain(reply) -> str:
    return "".join(reply)


def test_a_conversation_with_regenerate_edit_and_undo_gives_a_local_sessions_replies(cobra, image):
    sessions, served = remote(cobra)
    local = SessionManager(cobra)
    a, b = sessions.open_session(), local.open_session()
    sessions.set_image(a, image)
    local.set_image(b, image)
    steps = [("send", "What is in the image?", GREEDY), ("send", "Is there a dog?", GREEDY),
             ("regenerate", None, SAMPLED), ("edit", "Is the cup left of the plate?", GREEDY),
             ("send", "Describe the picture.", GREEDY)]
    for action, message, params in steps:
        args = {"send": (message, params), "regenerate": (params,), "edit": (1, message, params)}[action]
        mine, theirs = getattr(sessions, action)(a, *args), getattr(local, action)(b, *args)
        assert drain(mine) == drain(theirs)
        assert mine.turn_index == theirs.turn_index
        assert sessions.history(a) == local.history(b)
    # each request carried the conversation up to its message, replies as the release keeps them
    assert served.calls[-1] == [("user", "What is in the image?"), ("assistant", local.history(b)[0][1].strip()),
                                ("user", "Is the cup left of the plate?"),
                                ("assistant", local.history(b)[1][1].strip()), ("user", "Describe the picture.")]
    sessions.undo(a)
    local.undo(b)
    assert sessions.history(a) == local.history(b)
    sessions.reset(a)
    assert sessions.history(a) == []
    with pytest.raises(NoSuchTurn):
        sessions.undo(a)


def test_stop_keeps_the_partial_reply_and_refusals_leave_the_conversation_as_it_was(cobra, image):
    sessions, _ = remote(cobra)
    sid = sessions.open_session()
    sessions.set_image(sid, image)
    reply = sessions.send(sid, "What is in the image?", SamplingParams(max_new_tokens=30))
    first = next(reply)
    with pytest.raises(ReplyInProgress):
        sessions.send(sid, "Again?")
    sessions.stop(sid)
    assert sessions.history(sid) == [("What is in the image?", reply.text)] and reply.text.startswith(first)
    with pytest.raises(EmptyMessage):
        sessions.send(sid, "   ")
    assert sessions.history(sid) == [("What is in the image?", reply.text)]
    sessions.set_image(sid, image)  # the same image keeps the conversation
    assert len(sessions.history(sid)) == 1
    sessions.set_image(sid, None)  # another image (none) starts a new one
    assert sessions.history(sid) == [] and sessions.stats() == {"sessions": 1, "replies_in_flight": 0}


def test_the_page_handlers_chat_and_probe_over_remote_sessions_and_refuse_suites_in_plain_words(cobra, image,
                                                                                                 tmp_path):
    sessions, _ = remote(cobra)
    notes = RecordingNotifier()
    ui = ChatHandlers(sessions, notifier=notes)
    png = tmp_path / "image.png"
    image.save(png)
    sid = ui.open_tab()
    _, chat, _ = last(ui.send(str(png), "What is in the image?", sid, ParamValues(max_new_tokens=8)))
    assert [m["role"] for m in chat] == ["user", "assistant", "assistant"]  # the reply and its speed line
    _, probs, text = ui.probe(str(png), "Is there a dog?", sid)
    assert set(probs) == {"Yes", "No"} and abs(sum(probs.values()) - 1) < 1e-5 and "P(Yes)" in text
    assert ui.run_suite([], tmp_path, 10) is None
    assert len(notes.warnings) == 1 and "python -m cobra_app probe" in notes.warnings[0]
    ui.open_tab("browser-a")
    ui.close_browser("browser-a")  # unload: its session is closed (and logged, without a local state store)
    assert sessions.stats()["sessions"] == 1
