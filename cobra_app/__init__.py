"""Cobra Chat: chat with Cobra (DINOv2+SigLIP vision, Mamba LM), where follow-ups cost only their new tokens.

`from cobra_app import load` gives the researcher's API (see `cobra_app.pipeline`). Imported lazily so that light
modules (scenes, prompt builders) do not pay for torch and transformers.
"""

__all__ = ["Cobra", "load"]


def __getattr__(name: str):
    if name in __all__:
        from cobra_app import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
