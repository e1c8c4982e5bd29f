"""A concept known only from text (the base + text-prompt baseline) enters the context only of
requests that name it."""

import pytest

from omnipersona.pipeline import OmniPipeline


def test_description_joins_the_context_of_requests_that_name_it(tiny):
    pipe = OmniPipeline(tiny)
    pipe.describe("n3", "n3 is a red star .")
    blocks = pipe._system_blocks("is n3 in this image ?")
    assert blocks == [("text", pipe.bank.encode("n3 is a red star ."))]
    assert pipe._system_blocks("is n30 in this image ?") == []  # whole words only
    assert pipe._system_blocks("a photo of a star") == []


def test_description_names_are_single_words(tiny):
    with pytest.raises(ValueError, match="one lowercase word"):
        OmniPipeline(tiny).describe("<n3>", "n3 is a red star .")
