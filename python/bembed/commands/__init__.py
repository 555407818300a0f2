"""Subcommands of the `bembed` CLI, one module each (see bembed.cli)."""
