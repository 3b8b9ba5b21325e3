"""`serve` with speculative decoding: the same answers, OpenAI's prediction-token counts, and the acceptance metric."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import openai

from llama_isolate import Speculative
from llama_isolate.server import create_app

from ..helpers.server_tools import ask, metric, server_load
from ..helpers.serving import serving

QUOTE = (
    "The lighthouse was built in 1871 from granite. Its lamp was lit with paraffin, then with electricity in 1954.\n\n"
    "Quote, word for word, the sentence of the text above that gives the year it was built."
)


def test_a_speculative_server_reports_the_prediction_tokens_and_the_acceptance_rate(model_path: Path) -> None:
    load = dataclasses.replace(server_load(model_path), speculative=Speculative())
    with serving(create_app(load, model_name="smol")) as base_url:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
        answer = client.chat.completions.create(model="smol", messages=ask(QUOTE), max_tokens=40, temperature=0)
        usage = answer.usage
        assert usage is not None and usage.completion_tokens_details is not None
        accepted = usage.completion_tokens_details.accepted_prediction_tokens or 0
        rejected = usage.completion_tokens_details.rejected_prediction_tokens or 0
        assert 0 < accepted < usage.completion_tokens  # the quote was guessed from the prompt
        drafted = metric(base_url, "llama_isolate_draft_tokens_total")
        assert drafted == accepted + rejected
        assert metric(base_url, "llama_isolate_draft_acceptance_rate") == accepted / drafted
