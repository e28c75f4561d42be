"""difframe-samplers: the first-party samplers. Import the classes from their modules (e.g. difframe_samplers.euler)."""
