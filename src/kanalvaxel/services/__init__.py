"""Use cases: submit, decide, hand off, record outcomes, retry or fall back."""

from __future__ import annotations

from typing import Protocol

from kanalvaxel.ports import UnitOfWork


class UowFactory(Protocol):
    def __call__(self, *, read_only: bool = False) -> UnitOfWork:
        """A new unit of work. `read_only`: it only reads (and cannot commit), so it waits for no writer
        (on SQLite it reads a snapshot instead of taking the one writer's lock)."""
        ...
