"""The serving process's session manager, from its settings: one state store for the page, the API and ZeroGPU."""

from __future__ import annotations

import atexit

from cobra_app.sessions import SessionManager


def session_manager(cfg, cobra, **options) -> SessionManager:
    """A `SessionManager` over `cobra` with the store, timeouts and history of `cfg` (an `AppConfig`); `options`:
    further SessionManager arguments (the page's `gpu_call`). Closed at exit, so queued state files reach the disk."""
    manager = SessionManager(cobra, memory_budget_bytes=cfg.memory_budget, idle_timeout_s=cfg.idle_timeout,
                             history=cfg.history, state_dir=cfg.state_dir, state_dir_bytes=cfg.state_dir_size,
                             **options)
    atexit.register(manager.close)
    return manager
