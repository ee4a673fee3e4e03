"""Compare two results.json value for value, ignoring what differs between runs of the same code (timestamps,
durations, provenance: machine, versions, commit, command). Prints each difference with its JSON path; exit 0
when there is none, 1 otherwise.

    python scripts/compare_results.py BEFORE/results.json AFTER/results.json
"""

from __future__ import annotations

import json
import sys

IGNORED = {"provenance", "duration_s", "timestamp"}


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key in IGNORED:
                continue
            if key not in a or key not in b:
                out.append(f"{path}.{key}: only in {'after' if key not in a else 'before'}")
            else:
                out += differences(a[key], b[key], f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items before, {len(b)} after"]
        return [d for k, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{k}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} before, {b!r} after"]


def main(argv: list[str]) -> int:
    before, after = (json.load(open(p)) for p in argv[1:3])
    diff = differences(before, after)
    for line in diff[:200]:
        print(line)
    checks = [c["id"] for c in after.get("checks", [])]
    print(f"{len(diff)} difference(s) over {len(checks)} checks ({', '.join(checks)})")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
