"""Word-level tokenizers for the small backbones (`tiny`, `toy`); the real backbone uses the
Qwen2 tokenizer files from its folder. Both are `PreTrainedTokenizerFast` with BAGEL's markers."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .sequence import SPECIAL_TOKENS

UNK = "<unk>"
PAD = "<|endoftext|>"

# Enough words for the concept templates and the unit tests.
BASIC_WORDS = (
    "a an the is are of in on at to and or with this that it its what where who which how "
    "photo picture image yes no there here not describe show generate draw make edit remove add "
    "change recolour move toy home friend colour color shape red green blue yellow black white "
    "orange purple pink brown grey dog cat mug ball box star circle square triangle beach forest "
    "city snow large small big dotted striped plain left right top bottom background place "
    ". , ? ! : ; ' \" - question answer request prompt rewrite"
).split()


def build_word_tokenizer(words: list[str] | tuple[str, ...] = BASIC_WORDS) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word tokenizer over `words` plus BAGEL's special tokens."""
    vocab: dict[str, int] = {}
    for w in (UNK, PAD, *SPECIAL_TOKENS, *words):
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD)
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    return fast
