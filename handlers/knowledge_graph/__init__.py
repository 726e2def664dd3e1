"""Knowledge graph: entities and relationships from an asset's chunks, by an LLM."""
