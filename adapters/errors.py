"""Errors the adapters raise at start-up, each saying what the operator should fix."""


class AdapterError(Exception):
    """A platform refused the bot (bad token, missing intent…); the message says what to fix."""
