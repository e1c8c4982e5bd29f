"""Rules for the text users send (concept names, facts, questions, prompts). The API cannot import
`omnipersona.tokens` (it imports torch), so the name and reserved-token patterns are repeated here;
a test checks they equal the library's."""

from __future__ import annotations

import re
import unicodedata

from .errors import ApiError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
RESERVED_RE = re.compile(r"<(und|gen)_\d+(:[^>]*)?>")
PLACEHOLDER = "{c}"
MAX_TEXT_CHARS = 500


def identifier_for(name: str) -> str:
    return f"<{name}>"


def check_name(name: object, field: str = "name") -> str:
    # fullmatch: `$` alone would let a trailing newline through. The class is ASCII only, so
    # look-alike letters from other scripts (Cyrillic "а", fullwidth "ｍ") are refused, not folded.
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ApiError(field, f"must match {NAME_RE.pattern} (lowercase letter, then up to 31 of a-z 0-9 _)")
    return name


def _check_plain(text: str, field: str) -> None:
    # NFKC folds look-alikes such as fullwidth "＜und_1＞" into the ASCII a tokenizer might see.
    folded = unicodedata.normalize("NFKC", text)
    if RESERVED_RE.search(text) or RESERVED_RE.search(folded):
        raise ApiError(field, "uses a reserved concept-token name (<und_N>, <gen_N>)")
    if "<" in folded or ">" in folded:
        raise ApiError(field, "may not contain '<' or '>' except the concept's own identifier")


def check_text(value: object, field: str, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(field, "must be a non-empty string")
    value = value.strip()
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; refuse it as input, not as a 500
        raise ApiError(field, "may not contain NUL characters")
    if len(value) > max_chars:
        raise ApiError(field, f"is longer than {max_chars} characters")
    return value


def check_fact_text(value: object, field: str, identifier: str) -> str:
    """A fact's question or answer; the concept may be written as `{c}` or as its identifier.
    Stored with `{c}`, the form the library's ConceptData takes."""
    text = check_text(value, field).replace(identifier, PLACEHOLDER)
    _check_plain(text, field)
    return text


def check_request_text(value: object, field: str, identifier: str) -> str:
    """A question / prompt / instruction sent for rendering: it must name the concept."""
    text = check_text(value, field)
    if identifier not in text:
        raise ApiError(field, f"must name the concept as {identifier}")
    _check_plain(text.replace(identifier, ""), field)
    return text
