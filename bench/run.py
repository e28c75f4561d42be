"""Run every benchmark in this folder, one after another (each prints a markdown table)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

for script in sorted(Path(__file__).parent.glob("*.py")):
    if script.name != "run.py":
        print(f"\n## {script.stem}\n", flush=True)
        subprocess.run([sys.executable, str(script)], check=True)
