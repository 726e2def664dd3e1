"""Pydantic models (payloads, envelope, dead-letter record) and the SQL schema."""
