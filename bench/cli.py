"""Start-up cost: `import difframe`, `difframe plugins`, against importing the reference pipeline class.

Run: .venv/bin/python bench/cli.py [--repeat N]. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def wall_times(command: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    difframe = shutil.which("difframe", path=str(BIN)) or "difframe"
    cases = [
        ("python startup (baseline)", [sys.executable, "-c", "pass"], args.repeat),
        ("import difframe", [sys.executable, "-c", "import difframe"], args.repeat),
        ("difframe plugins", [difframe, "plugins"], args.repeat),
        ("difframe plugins --json", [difframe, "plugins", "--json"], args.repeat),
        (
            "reference: from diffusers import StableDiffusionPipeline",
            [sys.executable, "-c", "from diffusers import StableDiffusionPipeline"],
            max(3, args.repeat // 5),
        ),
    ]
    results = {label: statistics.median(wall_times(command, n)) for label, command, n in cases}
    reference = results["reference: from diffusers import StableDiffusionPipeline"]
    print(
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; `{Path(sys.executable).name} bench/cli.py --repeat {args.repeat}`.\n"
    )
    print("| what | median wall time | ratio to importing the reference pipeline |")
    print("| --- | ---: | ---: |")
    for label, seconds in results.items():
        print(f"| {label} | {seconds:.3f} s | {seconds / reference:.3f}x |")


if __name__ == "__main__":
    main()
