"""A replica's model as mobility sees it (`ServedModel` over a SessionManager), two managers standing for two replicas:
a state exported by one and adopted by the other is bit-exact and makes the follow-up read only its new tokens there;
the shared disk tier serves the other replica's states; the resume point separates the previous turn's states from
older ones."""

import pytest
import torch

from cobra_app.generation import SamplingParams
from cobra_app.scale.served import ServedModel, build_served_model
from cobra_app.serving.config import AppConfig
from cobra_app.sessions import EmptyMessage, SessionManager
from tests.scale.conftest import REPO

GREEDY = SamplingParams(max_new_tokens=8)
QUESTIONS = ("What is in the image?", "Is the cup left of the plate?", "Describe the picture.")


def turn(model: ServedModel, image, history: list, question: str):
    """One request of a client resending its conversation; returns (reply, its stats) and extends `history`."""
    history.append(("user", question))
    reply = model.complete(image, history, GREEDY)
    for _ in reply.events():
        pass
    history.append(("assistant", reply.release_text))
    return reply


def test_a_follow_up_finds_the_previous_turns_state_in_memory_and_another_replica_does_not(cobra, image):
    a, b = ServedModel(SessionManager(cobra)), ServedModel(SessionManager(cobra))
    history = []
    turn(a, image, history, QUESTIONS[0])
    request = a.request_keys(image, [*history, ("user", QUESTIONS[1])])
    assert request.resume is not None and 0 < request.resume < len(request.keys)
    assert a.longest_in_memory(request.keys) <= request.resume  # nothing has to move on `a`
    assert b.longest_in_memory(request.keys) is None
    assert a.request_keys(image, [("user", QUESTIONS[0])]).resume is None  # a first turn
    with pytest.raises(EmptyMessage):
        a.request_keys(image, [*history, ("user", "  ")])


def test_a_state_moved_between_replicas_is_bit_exact_and_the_follow_up_reads_only_its_new_tokens(cobra, image):
    a, b = ServedModel(SessionManager(cobra)), ServedModel(SessionManager(cobra))
    history = []
    turn(a, image, history, QUESTIONS[0])
    request = b.request_keys(image, [*history, ("user", QUESTIONS[1])])
    found = a.export(request.keys)
    assert found is not None and found.key == request.keys[a.longest_in_memory(request.keys)]
    b.adopt(found)
    moved = b.store.memory.peek(found.key)
    original = a.store.memory.peek(found.key)
    assert moved.state.max_abs_diff(original.state) == 0 and torch.equal(moved.logits, original.logits)
    alone = [*history]
    on_b = turn(b, image, history, QUESTIONS[1])
    on_a = turn(a, image, alone, QUESTIONS[1])
    assert on_b.text == on_a.text
    assert on_b.stats.cached_tokens == on_a.stats.cached_tokens and on_b.stats.processed_tokens == \
        on_a.stats.processed_tokens


def test_a_shared_disk_tier_serves_states_another_replica_wrote_after_this_one_started(cobra, image, tmp_path):
    a = ServedModel(SessionManager(cobra, state_dir=tmp_path))
    b = ServedModel(SessionManager(cobra, state_dir=tmp_path))
    history = []
    turn(a, image, history, QUESTIONS[0])
    a.manager.close()  # the disk writes are done
    request = b.request_keys(image, [*history, ("user", QUESTIONS[1])])
    assert b.longest_on_disk(request.keys) == a.longest_in_memory(request.keys) <= request.resume
    alone = [*history]
    on_b = turn(b, image, history, QUESTIONS[1])
    assert on_b.stats.cached_tokens == turn(a, image, alone, QUESTIONS[1]).stats.cached_tokens


def test_the_card_and_a_probe(cobra, image):
    model = ServedModel(SessionManager(cobra))
    card = model.card()
    assert card.model_id == cobra.config.model_id and card.tokenizer is cobra.tokenizer and card.banner == ""
    probs = model.score(image, "Is there a dog?")
    assert set(probs) == {"Yes", "No"} and model.stats()["sessions"] == 0


def test_a_replica_loads_the_configured_model_with_its_threads(tmp_path):
    demo = REPO / "assets" / "demo-model"
    if not demo.is_dir():
        pytest.skip("the offline demo model is not in assets/demo-model")
    threads = torch.get_num_threads()
    try:
        model = build_served_model(AppConfig(model=str(demo), state_dir=str(tmp_path)), threads=1)
        assert torch.get_num_threads() == 1 and model.card().banner == ""
    finally:
        torch.set_num_threads(threads)
    assert model.card().model_id == model.manager.cobra.config.model_id and model.store.disk is not None
