"""Where the bridge's CPU per message goes: py-spy samples a real ``usync bridge`` relaying a backlog.

A queue is pre-filled with ``--messages`` events, ``usync bridge`` (its own process, as
bench_peers runs it) relays them into a fresh topic, and py-spy (the ``bench`` extra)
samples it from the moment Kafka holds 10 % of them until it holds all: no start-up in
the profile. Printed: the functions with the most samples of their own (self) and the
most samples under them (total), as shares of all samples, and the raw folded stacks are
kept (``--folded``, e.g. for a flame graph).

    .local/venv/bin/python bench/profile_bridge.py --transport stomp [--messages 50000] [--top 25]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bridge import TRANSPORTS, delete, fill  # noqa: E402
from bench_peers import WARM, TopicCount, create_topic, delete_topic, events_topic, make_service  # noqa: E402

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def fold(lines: list[str]) -> tuple[collections.Counter, collections.Counter, int]:
    """Self and total samples per function from py-spy's folded stacks (``a;b;c 12``)."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_name(frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    return own, total, samples


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    where = match["file"].split("site-packages/")[-1].split("/h27/")[-1]
    return f"{match['function']} ({where})"


async def profile(transport: str, messages: int, rate: int, folded: Path) -> list[str]:
    queue, suffix = f"profile-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    topic = events_topic(suffix)
    await create_topic(topic)
    fill(queue, messages)
    with tempfile.TemporaryDirectory(prefix="usync-profile-") as tmp:
        service = make_service(f"usync-{transport}", queue, suffix, Path(tmp), 1000)
        pid = service.start()
        spy: subprocess.Popen | None = None
        try:
            async with TopicCount(topic) as count:
                deadline = time.monotonic() + 600
                await count.until(int(messages * WARM), service, deadline)
                spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                                        "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking",
                                        "--format", "raw", "--output", str(folded)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await count.until(messages, service, deadline)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(60)
            service.stop()
            delete(queue)
            await delete_topic(topic)
    return folded.read_text().splitlines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=list(TRANSPORTS), default="amqp")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--folded", default=None, help="keep py-spy's folded stacks here")
    args = parser.parse_args()
    folded = Path(args.folded or tempfile.mktemp(prefix="usync-bridge-", suffix=".folded"))
    own, total, samples = fold(asyncio.run(profile(args.transport, args.messages, args.rate, folded)))
    if not samples:
        print("py-spy took no samples (is ptrace allowed here?)")
        return 1
    print(f"{samples:,} samples of the bridge over {args.transport}, {args.messages:,} messages; folded stacks: {folded}")
    for title, counter in (("self", own), ("total (inclusive)", total)):
        print(f"\n-- {title} --")
        for name, n in counter.most_common(args.top):
            print(f"{100 * n / samples:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
