"""Fixtures for the loading tests: an offline hub cache in a temporary folder (huggingface_hub's layout, filled by
the tests, never downloaded) with every network call recorded and refused, and a tiny random Cobra."""

import pytest

from tests.helpers import make_tiny_vlm, offline_hub_cache, publish_tiny_llm, refuse_network, register_tiny_llm


@pytest.fixture
def network_calls(monkeypatch) -> list:
    return refuse_network(monkeypatch)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, network_calls):
    """An empty offline hub cache; the tiny LLM backbone is registered (its repo is not in the cache)."""
    cache = tmp_path / "hub"
    offline_hub_cache(monkeypatch, cache)
    register_tiny_llm(monkeypatch)
    return cache


@pytest.fixture
def tiny():
    """(random tiny CobraVLM, its tokenizer)."""
    return make_tiny_vlm()


@pytest.fixture
def published(hub_cache, tiny, monkeypatch):
    """The tiny model's LLM backbone registered, its config and tokenizer in the hub cache; returns the cache."""
    publish_tiny_llm(monkeypatch, hub_cache, *tiny)
    return hub_cache
