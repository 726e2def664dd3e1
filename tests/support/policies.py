"""The handlers' policies as a worker with the default settings builds them.

Tests take these (and ``dataclasses.replace`` what they need to differ)
rather than writing a default again: ``streams/settings.py`` is the only
place a default lives.
"""

from __future__ import annotations

from streams.policies import chunking_policy, extract_policy, fetch_policy, knowledge_graph_policy
from streams.settings import Settings

SETTINGS = Settings()
CHUNKING = chunking_policy(SETTINGS)
EXTRACT = extract_policy(SETTINGS)
FETCH = fetch_policy(SETTINGS)
KNOWLEDGE_GRAPH = knowledge_graph_policy(SETTINGS)
