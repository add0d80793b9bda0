"""Spec: every token that names something is marked with what it refers to in its row's scene; a stated relation's
verdict is carried to the answer."""

import torch

from cobra_app.demo.conversations import QA
from cobra_app.demo.phrasing import TRUE_FALSE_PROMPT
from cobra_app.demo.scenes import COLOURS, SHAPES, Scene, SceneObject
from cobra_app.demo.training.batching import make_batch
from cobra_app.demo.training.rows import IGNORE


def test_batch_marks_each_name_with_what_it_refers_to_in_the_rows_scene(tokens):
    red = SceneObject("circle", "red", size=0.1, x=0.25, y=0.4)
    blue = SceneObject("square", "blue", size=0.1, x=0.75, y=0.2)
    scene = Scene((red, blue), background=(245, 245, 245), texture=0.0, grain=0.0, noise_seed=0)
    rows = [(0, [QA("Is there a red circle?", "Yes", "exist")]), (0, [QA("Is there a blue cross?", "No", "exist")]),
            (0, [QA("Is the blue square to the left of the red circle?", "No", "spatial")]),
            (0, [QA("What colour is the circle?", "Red.", "colour")]),
            (0, [QA("How many blue shapes are in the image?", "One.", "count")]),
            (0, [QA("Are there any red circles?", "Yes", "exist")]),
            (0, [QA("Is the red circle lower than the blue square?", "Yes", "spatial")])]
    batch = make_batch([scene], rows, tokens, lambda scenes: {"x": torch.zeros(len(scenes), 1)})
    named, offsets = {}, {}
    for r, row in enumerate(batch.order):
        marked = batch.lookup_mask[r].any(-1).nonzero().flatten().tolist()
        named[row] = [(tokens.tokenizer.decode(batch.ids[r, t]),
                       [round(v, 4) for v in batch.lookup[r, t][batch.lookup_mask[r, t]].tolist()]) for t in marked]
        offsets[row] = [[round(v, 4) for v in batch.offsets[r, t][batch.offset_mask[r, t]].tolist()]
                        for t in batch.offset_mask[r].any(-1).nonzero().flatten().tolist()]
    # presence, centre, place from the left, place from the top
    red_circle, blue_square = [1, 0.25, 0.4, 1, 0, 0, 0, 0, 1, 0, 0], [1, 0.75, 0.2, 0, 1, 0, 0, 1, 0, 0, 0]
    assert named[0] == [(" red circle", red_circle)]
    assert named[1] == [(" blue cross", [0])]  # absent: no centre or place to predict
    assert named[2] == [(" blue square", blue_square), (" red circle", red_circle)]
    # at the red circle: its centre minus the blue square's, and how far "square left of circle" holds (it does not)
    assert offsets[2] == [[-0.5, 0.2, -0.5]]
    red_only = [1.0 if c == "red" else 0.0 for c in COLOURS]
    assert named[3] == [(" circle", red_only)]  # a shape word: which colours it has here
    square_only = [1.0 if s == "square" else 0.0 for s in SHAPES]
    assert named[4] == [(" blue", square_only)]  # a colour word: which shapes have it here
    assert offsets[0] == offsets[1] == offsets[3] == offsets[4] == offsets[5] == []
    assert named[5] == [(" red circles", red_circle)]  # a plural object name is the same key
    assert named[6] == [(" red circle", red_circle), (" blue square", blue_square)]
    assert offsets[6] == [[0.5, -0.2, 0.2]]  # "lower than" is "below": 0.4 - 0.2 > 0 holds


def test_a_stated_relations_verdict_is_carried_from_its_second_object_to_the_answer(tokens):
    red = SceneObject("circle", "red", size=0.1, x=0.25, y=0.4)
    blue = SceneObject("square", "blue", size=0.1, x=0.75, y=0.2)
    scene = Scene((red, blue), background=(245, 245, 245), texture=0.0, grain=0.0, noise_seed=0)
    statement = TRUE_FALSE_PROMPT.format(statement="The red circle is to the left of the blue square.")
    rows = [(0, [QA(statement, "True", "spatial"), QA("Is there a red circle?", "Yes", "exist")]),
            (0, [QA("Is the blue square above the red circle?", "Yes", "spatial")]),
            (0, [QA("Is there a red circle?", "Yes", "exist")])]
    batch = make_batch([scene], rows, tokens, lambda scenes: {"x": torch.zeros(len(scenes), 1)})
    for r, row in enumerate(batch.order):
        ids = batch.ids[r, : batch.lengths[r]].tolist()
        carried = batch.verdict_mask[r].nonzero().flatten().tolist()
        if row == 2:
            assert carried == []
            continue
        second = " blue square" if row == 0 else " red circle"
        first_answer = next(t for t in range(len(ids)) if batch.labels[r, t] != IGNORE)  # predicts "True" / "Yes"
        assert tokens.tokenizer.decode(ids[carried[0]]) == second
        assert carried == list(range(carried[0], first_answer + 1))  # through the statement's end, not past the answer
        assert tokens.tokenizer.decode(ids[first_answer + 1]) == rows[row][1][0].answer
        assert batch.verdicts[r, carried].tolist() == [1.0] * len(carried)  # both relations hold
    no = make_batch([scene], [(0, [QA("Is the red circle above the blue square?", "No", "spatial")])], tokens,
                      lambda scenes: {"x": torch.zeros(len(scenes), 1)})
    assert no.verdict_mask.sum() > 0 and no.verdicts[no.verdict_mask].tolist() == [0.0] * int(no.verdict_mask.sum())
