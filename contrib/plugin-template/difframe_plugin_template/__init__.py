"""A difframe plugin template: one attention backend, registered through an entry point."""

__version__ = "0.1.0"
