"""The operator commands (``conveyor ...``): the CLI entry point and one module per command."""
