"""The query pipeline (see the module docstring, written once the moves are done)."""
