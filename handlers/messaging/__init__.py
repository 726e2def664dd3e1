"""Outbound messages (``message.send``): posted to Kommo leads exactly once."""
