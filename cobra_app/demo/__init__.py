"""Offline demo: synthetic scenes, templated conversations and a small tokenizer for a miniature Cobra (issue 4)."""
