"""Fixtures of the node helper tests."""

from __future__ import annotations

import pytest


class FakeLogger:
    """Records what a node helper logs: (level, text) pairs in ``lines``."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def warning(self, text, **_):
        self.lines.append(("warning", text))

    def error(self, text, **_):
        self.lines.append(("error", text))


@pytest.fixture
def logger() -> FakeLogger:
    return FakeLogger()
