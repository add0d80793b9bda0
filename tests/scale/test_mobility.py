"""State mobility without Ray: `StateMover.bring` looks in memory, then asks the conversation's holder, then the disk
tier, else leaves the rebuild to the model; `export` answers only as the named target. The directory and the peers
are stand-ins that behave as the Ray handles do (`.method.remote(...)` returns an awaitable)."""

import asyncio

import pytest

from cobra_app.scale.messages import StateRequest
from cobra_app.scale.mobility import StateDirectory, StateMover
from tests.scale.fakes import EchoModel, expected_reply


class Remote:
    """`obj.method.remote(*args)` -> an awaitable of `obj.method(*args)`, or of a raised `error`."""

    def __init__(self, obj, error: Exception | None = None):
        self.obj, self.error = obj, error

    def __getattr__(self, name):
        method = getattr(self.obj, name)
        error = self.error

        class Call:
            @staticmethod
            def remote(*args):
                async def call():
                    if error is not None:
                        raise error
                    return method(*args)
                return call()
        return Call


class Peers:
    """The deployment handle as a mover sees it: `export_state` reaches the mover of the request's target."""

    def __init__(self):
        self.movers: dict[str, StateMover] = {}
        self.calls = 0

    def export_state(self, request: StateRequest):
        self.calls += 1
        mover = self.movers.get(request.target_replica)
        return None if mover is None else mover.export(request)


def conversation(turns: int) -> list[tuple[str, str]]:
    history = []
    for turn in range(turns):
        history.append(("user", f"question {turn}"))
        if turn < turns - 1:
            history.append(("assistant", expected_reply(history)))
    return history


def cluster(*names, disk_dir=None, directory_error=None, peer_error=None):
    directory, peers = StateDirectory(), Peers()
    models = {name: EchoModel(disk_dir) for name in names}
    for name, model in models.items():
        peers.movers[name] = StateMover(model, name, peers=lambda: Remote(peers, peer_error),
                                        directory=lambda: Remote(directory, directory_error))
    return models, peers.movers, directory, peers


def serve_turn(model, mover, messages):
    """What a replica does for one request: bring the state, answer, record itself as the holder."""
    source = asyncio.run(mover.bring("conv", model.request_keys(None, messages)))
    reply = model.complete(None, messages)
    text = "".join(e.text for e in reply.events())
    asyncio.run(mover.record("conv"))
    return source, text


def test_a_first_turn_has_nothing_to_find_and_a_follow_up_on_the_same_replica_is_a_memory_hit():
    models, movers, directory, peers = cluster("a", "b")
    assert serve_turn(models["a"], movers["a"], conversation(1))[0] == "new"
    assert serve_turn(models["a"], movers["a"], conversation(2))[0] == "memory"
    assert directory.holder("conv") == "a" and peers.calls == 0


def test_a_follow_up_elsewhere_takes_the_state_from_its_holder_and_reads_only_the_new_message():
    models, movers, directory, peers = cluster("a", "b")
    serve_turn(models["a"], movers["a"], conversation(1))
    before = models["b"].prefilled
    source, text = serve_turn(models["b"], movers["b"], conversation(2))
    assert source == "peer" and peers.calls == 1
    assert text == expected_reply(conversation(2)) and models["b"].prefilled - before == 1
    assert directory.holder("conv") == "b"


@pytest.mark.parametrize("holder_gone", ["dead", "forgot"])
def test_without_a_holder_the_state_comes_from_disk_else_it_is_rebuilt(tmp_path, holder_gone):
    for disk_dir, expected_source, rebuilt_messages in ((tmp_path, "disk", 1), (None, "rebuilt", 3)):
        models, movers, _, peers = cluster("a", "b", disk_dir=disk_dir)
        serve_turn(models["a"], movers["a"], conversation(1))
        if holder_gone == "dead":
            del peers.movers["a"]
        else:
            models["a"].memory.clear()
        before = models["b"].prefilled
        assert serve_turn(models["b"], movers["b"], conversation(2))[0] == expected_source
        assert models["b"].prefilled - before == rebuilt_messages


def test_a_failing_directory_or_peer_is_a_miss_not_an_error():
    for failure in ({"directory_error": RuntimeError("directory restarting")},
                    {"peer_error": TimeoutError("holder too slow")}):
        models, movers, directory, _ = cluster("a", "b", **failure)
        directory.record("conv", "a")
        serve_turn(models["a"], movers["a"], conversation(1))
        assert serve_turn(models["b"], movers["b"], conversation(2))[0] == "rebuilt"


def test_a_directory_handle_that_failed_is_fetched_anew_and_a_working_one_is_kept():
    directory, lookups = StateDirectory(), []

    def get_directory():
        lookups.append(1)
        return Remote(directory, RuntimeError("dead actor") if len(lookups) == 1 else None)

    mover = StateMover(EchoModel(), "a", peers=lambda: Remote(Peers()), directory=get_directory)
    asyncio.run(mover.record("conv"))  # fails: the handle is dropped
    asyncio.run(mover.record("conv"))
    asyncio.run(mover.record("conv"))
    assert len(lookups) == 2 and directory.holder("conv") == "a"


def test_an_export_answers_only_as_its_target_and_with_the_longest_state_held():
    models, movers, _, _ = cluster("a")
    serve_turn(models["a"], movers["a"], conversation(1))
    keys = models["a"].boundary_keys(None, conversation(2))
    assert movers["a"].export(StateRequest("b", keys)) is None
    found = movers["a"].export(StateRequest("a", keys))
    assert found.key == keys[1]  # the state after the first reply: the longest `a` holds
