"""Restarts lose nothing: with a state folder, a conversation resent after a restart resumes from disk
(cached_tokens > 0) and gets the very reply it would have got without the restart."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from cobra_app.generation import SamplingParams
from cobra_app.sessions import SessionManager
from tests.sessions.support import MESSAGES, drain, sampled

GREEDY = SamplingParams(max_new_tokens=8)
REPO = Path(__file__).resolve().parents[2]


def converse(manager, image, turns: int) -> list[tuple[str, str]]:
    """A client's conversation of `turns` exchanges through `complete`; returns the messages with the replies."""
    messages = []
    for turn in range(turns):
        messages.append(("user", MESSAGES[turn]))
        reply = manager.complete(image, messages, sampled(turn))
        drain(reply)
        messages.append(("assistant", reply.release_text))
    return messages


def test_a_conversation_resent_after_a_restart_resumes_from_disk(cobra, image, tmp_path):
    before = SessionManager(cobra, state_dir=tmp_path)
    messages = converse(before, image, 3) + [("user", MESSAGES[3])]
    before.close()  # (a process ends: its queued writes reach the disk)
    after = SessionManager(cobra, state_dir=tmp_path)  # a new process: empty memory, the same folder
    resumed = after.complete(image, messages, GREEDY)
    text = drain(resumed)
    stats = resumed.stats
    user_ids = cobra.turns.user_turn_ids(MESSAGES[3], first=False)
    reply_ids = cobra.turns.assistant_turn_ids(messages[-2][1])
    assert stats.cached_tokens >= stats.prompt_tokens - len(user_ids) - len(reply_ids) > 0
    assert after.stats()["disk_hits"] >= 1 and after.stats()["image_encodes"] == 0
    reference = SessionManager(cobra).complete(image, messages, GREEDY)  # no store at all: a full read
    assert text == drain(reference) and reference.stats.cached_tokens == 0


def test_a_session_after_a_restart_resumes_where_another_left_off(cobra, image, tmp_path):
    before = SessionManager(cobra, state_dir=tmp_path)
    sid = before.open_session()
    before.set_image(sid, image)
    replies = [drain(before.send(sid, message, GREEDY)) for message in MESSAGES[:2]]
    before.close()
    after = SessionManager(cobra, state_dir=tmp_path)
    sid = after.open_session()
    after.set_image(sid, image)  # the image prefix comes from disk: nothing encoded
    again = []
    for message in MESSAGES[:2]:
        again.append(after.send(sid, message, GREEDY))
        drain(again[-1])
    assert [reply.text for reply in again] == replies
    assert all(reply.stats.prefill_tokens <= 2 for reply in again[1:])  # only what the decoder had not read
    assert again[0].stats.prefill_tokens == 0 and after.stats()["image_encodes"] == 0


RESUME = textwrap.dedent("""
    import json, sys
    import torch
    from cobra_app.generation import SamplingParams
    from cobra_app.pipeline import Cobra
    from cobra_app.sessions import SessionManager
    from tests.helpers import make_tiny_vlm, sample_image

    torch.set_num_threads(1)
    vlm, tokenizer = make_tiny_vlm()
    manager = SessionManager(Cobra(vlm.requires_grad_(False), tokenizer, "tiny"), state_dir=sys.argv[1])
    messages = [tuple(m) for m in json.loads(sys.argv[2])]
    reply = manager.complete(sample_image(), messages, SamplingParams(max_new_tokens=8))
    text = "".join(reply)
    print(json.dumps({"text": text, "cached": reply.stats.cached_tokens, "prompt": reply.stats.prompt_tokens}))
""")


def test_another_process_resumes_from_the_folder(cobra, image, tmp_path):
    before = SessionManager(cobra, state_dir=tmp_path)
    messages = converse(before, image, 2) + [("user", MESSAGES[2])]
    before.close()
    out = subprocess.run([sys.executable, "-c", RESUME, str(tmp_path), json.dumps(messages)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = SessionManager(cobra).complete(image, messages, GREEDY)
    assert result["text"] == drain(expected)
    assert 16 < result["cached"] < result["prompt"] == expected.stats.prompt_tokens
