"Ordered tables of named entries (arch sources, split strategies, commands) that refuse a duplicate name."
from __future__ import annotations

__all__ = ['Registry']

from typing import Callable


class Registry(dict):
    "An ordered table of named entries that refuses a duplicate name (torch's `register_flop_formula`)"
    def __init__(self, what: str):
        super().__init__()
        self.what = what  # what an entry is, for messages: 'split strategy', 'arch source', 'command'

    def register(self, name: str | None = None) -> Callable:
        "Decorator: enter `f` under `name` (default `f.__name__`); a name already taken is an error"
        def _inner(f):
            key = name or f.__name__
            if key in self:
                raise ValueError(f"{self.what} {key!r} is already registered; choose another name")
            self[key] = f
            return f
        return _inner

    def get_or_raise(self, name: str):
        "The entry `name`, or a `ValueError` listing the valid names"
        if name not in self: raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self)}")
        return self[name]
