"""The plugin's entry point: it registers no component; it installs the "ray" engine (entry point group
``difframe.engines``), which `difframe generate --prompts FILE --engine ray` uses. No Ray import here."""
