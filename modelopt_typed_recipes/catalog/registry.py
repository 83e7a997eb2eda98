"""A name -> spec registry: case-insensitive lookup by HF id or alias, "did you mean", filters,
user registration, and an entry-point group through which other packages add entries.

The same class holds architectures and launch profiles (and, later, named recipes), so lookup and
error messages behave the same everywhere.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from ..errors import SpecError, UnknownNameError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Ordered registry keyed by a primary name plus aliases, all matched case-insensitively."""

    def __init__(
        self,
        what: str,
        *,
        keys: Callable[[T], Iterable[str]],
        entry_point_group: str | None = None,
        loaders: Iterable[Callable[[], Iterable[T]]] = (),
    ) -> None:
        self.what = what
        self._keys = keys
        self._group = entry_point_group
        self._loaders = list(loaders)
        self._items: list[T] = []
        self._index: dict[str, T] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ loading
    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: loaders call register()
            for load in self._loaders:
                for item in load():
                    self.register(item)
            if self._group:
                self._load_entry_points()

    def _load_entry_points(self) -> None:
        """Each entry point names a callable returning specs, or a spec, or an iterable of specs."""
        if not _group_declared(self._group or ""):
            # importing importlib.metadata took 41-69 ms here (python -X importtime, 3 runs, 2-core dev machine):
            # skip it when no installed package declares the group
            return
        from importlib import metadata

        for ep in metadata.entry_points(group=self._group or ""):
            try:
                obj = ep.load()
                produced = obj() if callable(obj) else obj
                items = produced if isinstance(produced, list | tuple) or hasattr(produced, "__iter__") else [produced]
                for item in items:
                    self.register(item)
            except SpecError:
                raise
            except Exception as exc:  # a broken plugin must not break listing; say which one
                raise SpecError(
                    f"entry point {ep.name!r} ({ep.value}) of group {self._group!r} failed: {exc}",
                    path=f"entry_points.{ep.name}",
                ) from exc

    # ------------------------------------------------------------------ API
    def register(self, item: T, *, replace: bool = False) -> T:
        """Add ``item``; a name or alias already taken is an error unless ``replace``."""
        self._ensure_loaded()
        keys = [k.lower() for k in self._keys(item)]
        with self._lock:
            if keys and all(self._index.get(k) is item for k in keys):
                return item  # the very same entry again (a notebook cell run twice): once in the list
            if replace:
                self.unregister(next(iter(self._keys(item))))
            for key in keys:
                if key in self._index and self._index[key] is not item:
                    other = next(iter(self._keys(self._index[key])))
                    raise SpecError(
                        f"{self.what} name {key!r} is already registered (by {other!r})",
                        path="name",
                        hint="pick another name, or register(..., replace=True)",
                    )
            self._items.append(item)
            for key in keys:
                self._index[key] = item
        return item

    def unregister(self, name: str) -> None:
        with self._lock:
            item = self._index.get(name.lower())
            if item is None:
                return
            self._items = [i for i in self._items if i is not item]
            self._index = {k: v for k, v in self._index.items() if v is not item}

    def get(self, name: str) -> T:
        self._ensure_loaded()
        item = self._index.get(name.strip().lower())
        if item is None:
            raise UnknownNameError(
                f"unknown {self.what} {name!r}",
                path="name",
                hint=did_you_mean(name, [k for i in self._items for k in self._keys(i)])
                or f"`list` shows the {len(self._items)} known names",
            )
        return item

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return isinstance(name, str) and name.strip().lower() in self._index

    def __iter__(self) -> Iterator[T]:
        self._ensure_loaded()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._items)

    def names(self) -> list[str]:
        return [next(iter(self._keys(i))) for i in self]


def _group_declared(group: str) -> bool:
    """Cheap pre-check: does any ``*.dist-info/entry_points.txt`` (or egg-info) on sys.path name ``group``?"""
    header = f"[{group}]"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(entry or ".", name, "entry_points.txt"), encoding="utf-8") as fh:
                    if header in fh.read():
                        return True
            except OSError:
                continue
    return False
