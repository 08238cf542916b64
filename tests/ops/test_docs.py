"""The operator guide documents every metric the processes expose, and the docs exist."""

from __future__ import annotations

import re

from bridges.metrics import BridgeMetrics
from streams.metrics import Metrics
from tests.app.harness import ROOT

GUIDE = ROOT / "docs" / "operator-guide.md"


def _exposed(registry) -> set[str]:
    names = set()
    for family in registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_is_documented():
    documented = set(re.findall(r"^\| `(usync_[a-z_]+)`", GUIDE.read_text(), re.M))
    exposed = _exposed(Metrics().registry) | _exposed(BridgeMetrics().registry)
    assert exposed - documented == set(), "undocumented metrics"
    assert documented - exposed == set(), "documented metrics that no process exposes"


def test_architecture_has_a_diagram():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert "```mermaid" in text and "flowchart" in text
