"""The operations console (``conveyor console``, docs/CONSOLE.md)."""
