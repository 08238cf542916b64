"""The JSON Schemas kept under docs/schemas/ are what ``usync topics schema`` prints now.

A reader in another language validates against the kept files; a change of a record's
Struct that is not followed by ``usync topics schema --write docs/schemas`` fails here,
naming the file."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from streams.cli import main
from streams.ops.topics import topic_schemas

KEPT = Path(__file__).resolve().parents[2] / "docs" / "schemas"
REGENERATE = "regenerate: .local/venv/bin/usync topics schema --write docs/schemas"


def printed(*args: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["topics", "schema", *args]) == 0
    return out.getvalue()


def test_every_topic_has_its_kept_schema_and_no_other_is_kept() -> None:
    kinds = set(topic_schemas())
    kept = {p.name.removesuffix(".schema.json") for p in KEPT.glob("*.schema.json")}
    assert kept == kinds, f"docs/schemas holds {sorted(kept)}, usync prints {sorted(kinds)}; {REGENERATE}"


def test_each_kept_schema_equals_what_the_command_prints() -> None:
    for kind in topic_schemas():
        path = KEPT / f"{kind}.schema.json"
        assert path.read_text() == printed("--topic", kind), f"{path} differs from `usync topics schema --topic {kind}`; {REGENERATE}"


def test_write_regenerates_the_directory_whole(tmp_path: Path) -> None:
    (tmp_path / "gone.schema.json").write_text("{}")  # a kind that no longer exists
    (tmp_path / "README.md").write_text("kept")
    printed("--write", str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {f"{k}.schema.json" for k in topic_schemas()} | {"README.md"}
    for kind in topic_schemas():
        assert (tmp_path / f"{kind}.schema.json").read_text() == (KEPT / f"{kind}.schema.json").read_text()
