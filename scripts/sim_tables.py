#!/usr/bin/env python3
"""Print (or rewrite in place) the tables at the end of a simulated device profile.

The calibration table compares the profile with the core paper's RK3588 results; the
end-to-end table compares whole-model decode speeds with the public figures under the
profile's ``anchors``. tests/test_calibration.py checks that both blocks are current.

Usage: python scripts/sim_tables.py [--write] [PROFILE]   (default: the shipped rk3588)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from adaptive_sched.paths import resolve_config
from adaptive_sched.sim import (
    anchor_table,
    calibration_table,
    format_anchor_table,
    format_calibration_table,
    load_profile,
)

BLOCKS = {
    "CALIBRATION TABLE": lambda profile: format_calibration_table(calibration_table(profile), prefix="# "),
    "END-TO-END TABLE": lambda profile: format_anchor_table(anchor_table(profile), prefix="# "),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", nargs="?", default="rk3588", help="profile name or path")
    parser.add_argument("--write", action="store_true", help="rewrite the blocks in the profile file")
    args = parser.parse_args(argv)
    path = Path(resolve_config(args.profile, "devices"))
    profile = load_profile(path)
    text = path.read_text(encoding="utf-8")
    for name, make in BLOCKS.items():
        table = make(profile)
        if not args.write:
            print(f"# {name}\n{table}\n")
            continue
        pattern = re.compile(rf"(# BEGIN {name}\n).*?(# END {name}\n)", re.S)
        if not pattern.search(text):
            print(f"{path}: no '# BEGIN {name}' ... '# END {name}' block", file=sys.stderr)
            return 1
        text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
    if args.write:
        path.write_text(text, encoding="utf-8")
        print(f"rewrote the tables in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
