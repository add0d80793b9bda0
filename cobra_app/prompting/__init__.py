"""Prompt formats of the release and their per-turn tokenization."""

from cobra_app.prompting.builders import (
    EOS,
    PROMPT_BUILDERS,
    PromptBuilder,
    clean_message,
    clean_text,
    get_prompt_builder,
)
from cobra_app.prompting.tokenization import TurnTokenizer

__all__ = ["EOS", "PROMPT_BUILDERS", "PromptBuilder", "TurnTokenizer", "clean_message", "clean_text",
           "get_prompt_builder"]
