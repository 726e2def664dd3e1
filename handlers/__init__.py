"""Job handlers: one module per domain; no Faust, no environment reads."""
