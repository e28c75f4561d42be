"""difframe-plugin-lcm is not installed in the shared environment: make its sources importable for these tests
(its entry point stays uninstalled; test_install.py installs it for real in a throwaway venv)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
