"""The tiny colorize job bench/service.py and its parts (reads, rows) time: one place, so the
parts import it instead of each other."""
from __future__ import annotations

STEPS, SIZE, SEED = 8, 64, 1234
PARAMS = {"steps": STEPS, "seed": SEED, "sag_scale": 0.05, "sag_threshold": 600,
          "guidance": {"mode": "cfg", "scale": 7.0}}
