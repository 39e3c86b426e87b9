"""Clients of the Rosetta translation service: `TranslatorClient` and the `rosetta-translate` CLI."""

from client.translator import Result, TextReport, TranslationError, TranslatorClient

__all__ = ["Result", "TextReport", "TranslationError", "TranslatorClient"]
