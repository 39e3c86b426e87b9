"""Clients of the Rosetta translation service: `TranslatorClient` and the `rosetta-translate` CLI."""

from client.translator import TranslationError, TranslatorClient

__all__ = ["TranslationError", "TranslatorClient"]
