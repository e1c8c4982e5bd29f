"""Explicit knowledge recaptioning: the same model, in text mode, turns a request that needs a
remembered fact into an explicit prompt, in three stages:

1. intent parsing — rewrite the request as a question, from k few-shot examples (default 6);
2. memory retrieval — answer that question with the concept tokens in context;
3. prompt rewriting — fold the answer back into the request.

The trace (query, answer, rewritten prompt) is returned to the user so the model's knowledge is
auditable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# (request, question, answer, rewritten prompt); {c} stands for a concept identifier.
FEW_SHOT = (
    ("generate a toy for {c}", "what is the toy of {c} ?", "a red ball", "generate the red ball of {c}"),
    ("draw {c} at its home", "what is the home of {c} ?", "the beach", "draw {c} at the beach"),
    ("show {c} with its friend", "who is the friend of {c} ?", "a blue cat", "show {c} with a blue cat"),
    ("make a photo of {c} at home", "what is the home of {c} ?", "the forest", "make a photo of {c} at the forest"),
    ("draw the toy of {c}", "what is the toy of {c} ?", "a green box", "draw the green box of {c}"),
    ("show the friend of {c}", "who is the friend of {c} ?", "a white dog", "show the white dog of {c}"),
)
INTENT_PREFIX = "request :"
QUESTION_PREFIX = "question :"
ANSWER_PREFIX = "answer :"
PROMPT_PREFIX = "prompt :"


@dataclass
class RecaptionTrace:
    request: str
    query: str
    answer: str
    prompt: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def intent_context(request: str, k: int = 6, placeholder: str = "<x>") -> list[str]:
    """Text blocks for stage 1: k (request, question) pairs, then the request."""
    blocks = []
    for req, q, _, _ in FEW_SHOT[:k]:
        blocks += [f"{INTENT_PREFIX} {req.format(c=placeholder)}", f"{QUESTION_PREFIX} {q.format(c=placeholder)}"]
    return blocks + [f"{INTENT_PREFIX} {request}"]


def rewrite_context(request: str, answer: str, k: int = 6, placeholder: str = "<x>") -> list[str]:
    """Text blocks for stage 3: k (request, answer, prompt) triples, then request + answer."""
    blocks = []
    for req, _, a, p in FEW_SHOT[:k]:
        blocks += [f"{INTENT_PREFIX} {req.format(c=placeholder)} {ANSWER_PREFIX} {a}",
                   f"{PROMPT_PREFIX} {p.format(c=placeholder)}"]
    return blocks + [f"{INTENT_PREFIX} {request} {ANSWER_PREFIX} {answer}"]


def strip_prefix(text: str, prefix: str) -> str:
    text = text.strip()
    return text[len(prefix):].strip() if text.startswith(prefix) else text
