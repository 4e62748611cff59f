#!/usr/bin/env python3
"""Sets two result files of the Erlang benches side by side.

    python3 benches/compare.py OLD.json NEW.json [FILTER]

Every number found in both files (by its path, e.g.
matrix.10000.strategies.q_learning.execute_per_s_2) is printed with its
value in each and the ratio new/old; FILTER keeps the paths containing it.
Files come from `make bench-erlang` (BENCH_JSON) or `make bench-load`
(LOAD_JSON).
"""
import json
import sys


def leaves(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, float(node)


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        old = dict(leaves(json.load(f)))
    with open(argv[2]) as f:
        new = dict(leaves(json.load(f)))
    want = argv[3] if len(argv) == 4 else ""
    paths = [p for p in old if p in new and want in p]
    if not paths:
        print("no figure in common" + (f" matching {want!r}" if want else ""), file=sys.stderr)
        return 1
    width = max(len(p) for p in paths)
    print(f"{'figure':<{width}} {'old':>14} {'new':>14} {'new/old':>8}")
    for p in paths:
        a, b = old[p], new[p]
        ratio = f"{b / a:8.2f}" if a else "       -"
        print(f"{p:<{width}} {a:14.6g} {b:14.6g} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
