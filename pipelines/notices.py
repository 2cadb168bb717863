"""Notices: what a request tells the person besides its images (an annotator's fallback, a prompt
a v1.0 model missing, a first compile, a VAE retry), collected one way through every step."""

from __future__ import annotations

from dataclasses import dataclass

WARNING = "warning"
COMPILE = "compile"  # the fast path compiled for a new shape during this request


@dataclass(frozen=True)
class Notice:
    text: str
    kind: str = WARNING


class Notices(list):
    """The notices of one request, in the order they arose."""

    def add(self, text: str | None, kind: str = WARNING) -> None:
        if text:
            self.append(Notice(text, kind))

    def extend_texts(self, texts, kind: str = WARNING) -> None:
        for text in texts:
            self.add(text, kind)

    @property
    def texts(self) -> list[str]:
        return [notice.text for notice in self]

    def first(self, kind: str) -> str | None:
        return next((notice.text for notice in self if notice.kind == kind), None)
