"""The existing agent's own venv, ``.local/agent-venv``, from the pins in bench/agent-requirements.txt.

Shared by bench/bench_side_by_side.py and tests/sim/test_real_agent.py: its pins clash with
usync's (pydantic, httpx), so the agent runs in a venv of its own, driven by
bench/agent_driver.py. Installing takes about 20 s (all wheels, about 155 MB).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT_VENV = ROOT / ".local/agent-venv"
AGENT_PY = AGENT_VENV / "bin/python"
AGENT_REQUIREMENTS = ROOT / "bench/agent-requirements.txt"
AGENT_DRIVER = ROOT / "bench/agent_driver.py"
AGENT_STAMP = AGENT_VENV / ".requirements.sha256"


def ensure_agent_venv() -> Path:
    """Create .local/agent-venv from the pinned requirements (idempotent: a stamp holds their
    hash); returns its python."""
    digest = hashlib.sha256(AGENT_REQUIREMENTS.read_bytes()).hexdigest()
    if AGENT_PY.exists() and AGENT_STAMP.exists() and AGENT_STAMP.read_text().strip() == digest:
        return AGENT_PY
    print("installing waldur-site-agent into .local/agent-venv (about 20 s) …", file=sys.stderr, flush=True)
    if not AGENT_PY.exists():
        subprocess.run(["python3", "-m", "venv", str(AGENT_VENV)], check=True)
    subprocess.run([str(AGENT_PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(AGENT_PY), "-m", "pip", "install", "-q", "-r", str(AGENT_REQUIREMENTS)], check=True)
    AGENT_STAMP.write_text(digest + "\n")
    return AGENT_PY
