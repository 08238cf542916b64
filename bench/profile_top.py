"""The top costs of a py-spy profile (collapsed stacks, ``py-spy record --format raw``).

    .local/venv/bin/python bench/profile_top.py PROFILE.txt [--per envelope --units N] [--top 15]

``bench/bench_fold.py --profile DIR`` records the worker while it folds and the sink while
it corrects, and prints this report for each. Two views, each as a share of the process's
CPU samples (and, with ``--units``, as µs of CPU per unit at py-spy's 100 Hz):

- **self**: where the samples were, by the leaf frame's module (msgspec, aiokafka's C
  parts and the like have no Python frames: their time is their Python caller's);
- **inclusive**: the functions with the most samples under them (every stack counts a
  function once), outer frames that hold nearly everything of their thread (the loop,
  faust's worker: 90 % of the samples under the thread's outermost frame) left out.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+?)(?::(?P<line>\d+))?\)$")
RATE = 100  # samples per second: bench_fold.py's py-spy --rate


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) of each frame, outermost first; py-spy's process/thread headers dropped."""
    out = []
    for part in stack.split(";"):
        match = _FRAME.match(part.strip())
        if match is None:
            continue  # "process 12:..." or "thread (0x..)"
        out.append((match["func"], match["file"]))
    return out


def module_of(path: str) -> str:
    """A short name for the file a frame is in: ``aiokafka/producer``, ``streams/core/fold``, ``asyncio/events``."""
    path = path.replace("\\", "/")
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker != "site-packages/":
                path = path.split("/", 1)[1] if "/" in path else path
            break
    else:
        for root in ("streams/", "waldursim/", "bridges/", "bench/"):
            if root in path:
                path = root + path.split(root, 1)[1]
                break
    parts = path.removesuffix(".py").split("/")
    if parts[0] == "streams":
        return "/".join(parts[:3])
    return "/".join(parts[:2])


def load(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((_frames(stack), int(count)))
    return stacks


def report(path: Path, per: str = "", units: int = 0, top: int = 15, outer_share: float = 0.9) -> str:
    stacks = load(path)
    total = sum(count for _, count in stacks)
    if not total:
        return f"{path}: no samples"
    by_module: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    roots: collections.Counter[str] = collections.Counter()  # samples under each outermost frame (a thread)
    under: dict[str, set[str]] = collections.defaultdict(set)  # function -> the outermost frames it runs under
    for frames, count in stacks:
        if not frames:
            continue
        by_module[module_of(frames[-1][1])] += count
        root = f"{module_of(frames[0][1])}.{frames[0][0]}"
        roots[root] += count
        for name in {f"{module_of(file)}.{func}" for func, file in frames}:
            inclusive[name] += count
            under[name].add(root)

    def line(name: str, count: int) -> str:
        share = f"{100 * count / total:5.1f} %"
        cost = f"  {count / RATE / units * 1e6:8.2f} µs/{per}" if units else ""
        return f"  {share}{cost}  {name}"

    lines = [f"{path}: {total:,} CPU samples at {RATE} Hz ({total / RATE:.1f} s)"
             + (f", {units:,} {per}s" if units else ""), " self, by module:"]
    lines += [line(name, count) for name, count in by_module.most_common(top)]
    lines.append(" inclusive, by function (outer frames above "
                 f"{outer_share:.0%} left out):")
    inner = [(name, count) for name, count in inclusive.most_common()
             if count < outer_share * sum(roots[root] for root in under[name])]
    lines += [line(name, count) for name, count in inner[:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--per", default="unit")
    parser.add_argument("--units", type=int, default=0)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(report(args.profile, args.per, args.units, args.top))


if __name__ == "__main__":
    main()
