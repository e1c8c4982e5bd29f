"""The words of the toy world and its tokenizer.

`WORDS` keeps `omnipersona.tokenizer.BASIC_WORDS` first (so their ids match the `tiny` tokenizer),
then the world's attribute words, places and fact nouns, names and numbers, then every word of
the task templates and of the recaptioning few-shot examples. The recaptioning placeholder `<x>`
is one added token. About 200 entries: well inside the `toy` preset's vocabulary of 512.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerFast

from ..recaption import ANSWER_PREFIX, FEW_SHOT, INTENT_PREFIX, PROMPT_PREFIX, QUESTION_PREFIX
from ..tokenizer import BASIC_WORDS, build_word_tokenizer
from .tasks import NAMES, NUMBER_WORDS, PLACEHOLDER, TEMPLATES
from .world import COLOURS, FRIENDS, PATTERNS, PLACES, POSITIONS, SHAPES, SIZES, TOYS

_WORD_RE = re.compile(r"\w+|[^\w\s]")


def words_of(text: str) -> list[str]:
    """The words and punctuation marks of `text`, lower-cased, without `{...}` fields."""
    return _WORD_RE.findall(re.sub(r"\{[^}]*\}", " ", text).lower())


def _world_words() -> list[str]:
    words: list[str] = [*BASIC_WORDS]
    words += [*SHAPES, *COLOURS, *PATTERNS, *SIZES, *PLACES, *TOYS, *FRIENDS]
    words += [w for p in POSITIONS for w in p.split()]
    words += [*NAMES, *NUMBER_WORDS, *(str(i) for i in range(10)), "object", "objects"]
    for text in TEMPLATES:
        words += words_of(text)
    for row in FEW_SHOT:
        for text in row:
            words += words_of(text)
    for prefix in (INTENT_PREFIX, QUESTION_PREFIX, ANSWER_PREFIX, PROMPT_PREFIX):
        words += words_of(prefix)
    return list(dict.fromkeys(words))


WORDS: tuple[str, ...] = tuple(_world_words())


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """The toy world's word tokenizer: `WORDS` + BAGEL's special tokens + the `<x>` placeholder."""
    tok = build_word_tokenizer(WORDS)
    tok.add_tokens([PLACEHOLDER])
    return tok
