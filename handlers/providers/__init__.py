"""Clients of the external services handlers call (Kommo; the others join in issue 11)."""
