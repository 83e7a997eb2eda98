"""Test helper: the order of a run's stages and of the cache releases between them (``runtime/cached_memory.py``)."""

from __future__ import annotations

from types import ModuleType


def record_stages_and_releases(monkeypatch, steps: ModuleType, techniques: tuple[str, ...]) -> list[str]:
    """Events of a run: each named executor of ``steps`` beginning (its name) and ending (``"<name> done"``), and
    ``"release"`` for each ``torch.cuda.empty_cache`` call between executors (ModelOpt's own calls inside a stage
    are not the backend's and are left out)."""
    import torch

    events: list[str] = []
    busy: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None if busy else events.append("release"))
    for name in techniques:
        real = getattr(steps, name)

        def step(*a, _name=name, _real=real, **k):
            events.append(_name)
            busy.append(_name)
            try:
                return _real(*a, **k)
            finally:
                busy.pop()
                events.append(f"{_name} done")
        monkeypatch.setattr(steps, name, step)
    return events
