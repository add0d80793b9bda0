"""The researcher's five-line API on a tiny model: generate, stream, score, text-only."""

import pytest
import torch

from cobra_app import load
from cobra_app.generation import SamplingParams
from cobra_app.loading import save_model_dir
from tests.helpers import make_tiny_vlm, sample_image
from tests.model.test_cuda_graph import graphs_on_cpu  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def cobra(tmp_path_factory):
    vlm, tokenizer = make_tiny_vlm()
    return load(save_model_dir(vlm, tokenizer, tmp_path_factory.mktemp("m") / "tiny"), device="cpu")


def test_greedy_generation_is_deterministic_and_streams_the_same_text(cobra):
    image = sample_image()
    first = cobra.generate(image, "What is in the image?", max_new_tokens=12)
    assert first == cobra.generate(image, "What is in the image?", max_new_tokens=12)
    assert "".join(cobra.stream(image, "What is in the image?", SamplingParams(max_new_tokens=12))).strip() == first


def test_generate_returns_the_reply_stripped_as_the_release_does_and_stream_does_not(cobra):
    streamed, generated = [], []
    for seed in range(8):
        params = SamplingParams(greedy=False, seed=seed, max_new_tokens=6)
        streamed.append("".join(cobra.stream(sample_image(), "Describe it.", params)))
        generated.append(cobra.generate(sample_image(), "Describe it.", params))
    assert generated == [text.strip() for text in streamed]
    assert any(text != text.strip() for text in streamed)  # the random model's replies do start with spaces


def test_identity_tells_models_apart_and_names_the_same_weights_alike(cobra, tmp_path):
    same = load(save_model_dir(*make_tiny_vlm(), tmp_path / "again"), device="cpu")
    other = load(save_model_dir(*make_tiny_vlm(seed=1), tmp_path / "other"), device="cpu")
    bf16 = load(save_model_dir(*make_tiny_vlm(), tmp_path / "bf16"), device="cpu", dtype="bfloat16")
    assert cobra.identity() == same.identity()
    assert len({cobra.identity(), other.identity(), bf16.identity()}) == 3


def test_seeded_sampling_reproduces(cobra):
    params = SamplingParams(greedy=False, temperature=1.5, top_p=0.95, seed=3, max_new_tokens=16)
    a = cobra.generate(sample_image(), "Describe it.", params)
    assert a == cobra.generate(sample_image(), "Describe it.", params)
    others = {cobra.generate(sample_image(), "Describe it.", params, seed=s) for s in range(4, 9)}
    assert len(others | {a}) > 1


def test_score_is_a_distribution_over_the_pair(cobra):
    probs = cobra.score(sample_image(), "Is there a cat in the image?")
    assert set(probs) == {"Yes", "No"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    tf = cobra.score(sample_image(), "The cat is left of the dog.", answers="true-false")
    assert set(tf) == {"True", "False"}


def test_image_changes_the_answer_distribution_and_text_only_works(cobra):
    with_image = cobra.score(sample_image(seed=1), "Is there a cat?")
    other_image = cobra.score(sample_image(seed=2, width=20, height=60), "Is there a cat?")
    assert with_image["Yes"] != other_image["Yes"]
    assert sum(cobra.score(None, "Is there a cat?").values()) == pytest.approx(1.0, abs=1e-6)


def test_info_names_what_runs(cobra):
    info = cobra.info()
    assert info["device"] == "cpu" and info["dtype"] == info["compute_dtype"] == "float32"
    assert info["ops"] in ("torch", "cpu-kernel") and info["precision"] and info["cpu_kernels"]
    assert info["parameters"] == sum(p.numel() for p in cobra.vlm.parameters())
    assert info["state_bytes"] == cobra.vlm.llm.initial_state().nbytes


def test_int8_loads_through_the_api_says_so_and_scores_like_the_fp32_model(cobra, tmp_path):
    int8 = load(save_model_dir(*make_tiny_vlm(), tmp_path / "int8"), device="cpu", dtype="int8")
    info = int8.info()
    assert info["dtype"] == "int8" and "int8" in info["precision"]
    assert int8.identity() != cobra.identity()  # its states are not the fp32 model's
    ours, reference = (model.score(sample_image(), "Is there a cat?") for model in (int8, cobra))
    assert ours["Yes"] == pytest.approx(reference["Yes"], abs=0.02)  # int8 rows: <= 1/254 of a row's peak per weight


def test_image_path_is_accepted(cobra, tmp_path):
    path = tmp_path / "img.png"
    sample_image().save(path)
    assert torch.equal(cobra.encode_image(path), cobra.encode_image(sample_image()))


def test_a_session_manager_has_the_decode_graphs_captured_for_every_batch_size(cobra, graphs_on_cpu):
    """On CUDA, decode steps replay graphs: the sessions' BatchedStepper has `Cobra.capture_step_graphs` capture
    batch sizes 1..max_batch when the manager is created (here on the CPU, captured eagerly), not while serving."""
    from cobra_app.sessions import SessionManager

    assert cobra.capture_step_graphs([]) == []  # nothing captured yet
    SessionManager(cobra, max_batch=3)
    assert len(graphs_on_cpu) == 3 and cobra.capture_step_graphs(range(1, 4)) == [1, 2, 3]
    assert len(graphs_on_cpu) == 3
