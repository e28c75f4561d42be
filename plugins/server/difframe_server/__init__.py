"""difframe-server: `difframe serve`, an HTTP server over difframe's pipelines."""

__version__ = "0.1.0"
