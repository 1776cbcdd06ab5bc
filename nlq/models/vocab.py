"""Query normalisation, word/char tokenisation and the vocabulary of the word-level encoders."""
from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Iterable

_WORD = re.compile(r"[\w']+|[^\w\s]")


def normalize_query(text: str) -> str:
    """docs/nlq.md#labels: strip, drop "?", lower-case, add "?" ("Where is it? " -> "where is it?")."""
    return text.strip().replace("?", "").strip().lower() + "?"


def word_tokens(text: str) -> list[str]:
    """Words and punctuation of a normalised query ("where's my cup?" -> [where's, my, cup, ?])."""
    return _WORD.findall(normalize_query(text))


def char_tokens(text: str) -> list[str]:
    """Characters of the words of a normalised query (spaces excluded)."""
    return [c for word in word_tokens(text) for c in word]


class Vocabulary:
    """Token <-> index map; index 0 is ``<pad>``, index 1 is ``<unk>``."""

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, tokens: Iterable[str]):
        """tokens: the known tokens in index order, without the two special ones."""
        self.tokens = [self.PAD, self.UNK] + [t for t in tokens if t not in (self.PAD, self.UNK)]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1,
              tokenize: Callable[[str], list[str]] = word_tokens) -> "Vocabulary":
        """Tokens seen at least ``min_count`` times in ``texts``, most frequent first."""
        counts = Counter(t for text in texts for t in tokenize(text))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(t for t, c in ranked if c >= min_count)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token indices (unknown tokens -> index of ``<unk>``)."""
        unk = self.index[self.UNK]
        return [self.index.get(t, unk) for t in tokens]
