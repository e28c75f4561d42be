"""difframe-plugin-lcm: LCM and TCD samplers for difframe (the classes live in .lcm and .tcd)."""
