"""Job handlers: one room per domain, outside services in providers/; no Faust, no environment."""
