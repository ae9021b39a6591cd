"""Use cases: submit, decide, hand off, record outcomes, retry or fall back."""

from __future__ import annotations

from collections.abc import Callable

from kanalvaxel.ports import UnitOfWork

UowFactory = Callable[[], UnitOfWork]
