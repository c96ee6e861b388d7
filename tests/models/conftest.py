"""Fixtures of the model tests: the fake OpenAI-compatible server."""

from tests.models.fake_openai import fake_openai

__all__ = ["fake_openai"]
