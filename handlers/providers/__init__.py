"""Clients of the external services handlers call.

Embeddings and chat (OpenAI-compatible APIs), Kommo, their rate limits and
the organizations' daily token budgets.
"""
