"""`contract diff`: a catalogue of contract changes, each classified for publishers and
subscribers; the released snapshot; `--against` the previous commit."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lifeops_contract import contract
from lifeops_mesh.tools import contract_source
from lifeops_mesh.tools.contract_diff import BOTH, NOBODY, Change, Side, diff
from lifeops_mesh.tools.contract_snapshot import Snapshot, decode, encode

ROOT = Path(__file__).resolve().parents[2]
RELEASED = ROOT / "lifeops_contract" / "released"
PUB: frozenset[Side] = frozenset(("publishers",))
SUB: frozenset[Side] = frozenset(("subscribers",))
Edit = Callable[[Snapshot], None]


def copy(snap: Snapshot) -> Snapshot:
    return decode(encode(snap))


def props(snap: Snapshot, schema: str) -> dict[str, Any]:
    found: dict[str, Any] = snap.schemas[schema]["properties"]
    return found


def _set(key: str, **changes: Any) -> Edit:
    def edit(s: Snapshot) -> None:
        s.topics[key] = msgspec.structs.replace(s.topics[key], **changes)

    return edit


def _drop_topic(s: Snapshot) -> None:
    del s.topics["levelup"]


def _add_topic(s: Snapshot) -> None:
    s.topics["new_thing"] = msgspec.structs.replace(s.topics["levelup"], topic="stats/new")


def _new_optional(s: Snapshot) -> None:
    props(s, "LevelUp")["mood"] = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}


def _new_required(s: Snapshot) -> None:
    props(s, "LevelUp")["mood"] = {"type": "string"}
    s.schemas["LevelUp"]["required"].append("mood")


def _remove_field(s: Snapshot) -> None:
    first = next(iter(props(s, "LevelUp")))
    del props(s, "LevelUp")[first]
    s.schemas["LevelUp"]["required"] = [r for r in s.schemas["LevelUp"]["required"] if r != first]


def _retype(s: Snapshot) -> None:
    props(s, "ActivityLogRequest")["activity_type"] = {"type": "integer"}


def _widen_enum(s: Snapshot) -> None:
    source = props(s, "ActivityLogRequest")["source"]
    source["enum"] = [*source["enum"], "zapier"]


def _narrow_length(s: Snapshot) -> None:
    props(s, "ActivityLogRequest")["activity_type"]["maxLength"] = 16


def _optional_to_required(s: Snapshot) -> None:
    s.schemas["ActivityLogRequest"]["required"].append("activity_id")


def _required_to_optional(s: Snapshot) -> None:
    required = s.schemas["ActivityLogRequest"]["required"]
    s.schemas["ActivityLogRequest"]["required"] = [r for r in required if r != "activity_type"]


def _reply_field_removed(s: Snapshot) -> None:
    del props(s, "CharacterReply")["character"]


def _reply_new_required(s: Snapshot) -> None:
    props(s, "CharacterReply")["etag"] = {"type": "string"}
    s.schemas["CharacterReply"].setdefault("required", []).append("etag")


def _nested_field_retyped(s: Snapshot) -> None:
    sheet = props(s, "CharacterSheet")
    nested = next(n for n, p in sheet.items() if "$ref" in str(p))
    ref = re.search(r"#/schemas/(\w+)", str(sheet[nested]))
    assert ref is not None
    inner = props(s, ref.group(1))
    inner[next(iter(inner))] = {"type": "boolean"}


def _reply_removed(s: Snapshot) -> None:
    s.topics["character_get"] = msgspec.structs.replace(
        s.topics["character_get"], reply_schema=None, timeout_s=None
    )


CATALOGUE: list[tuple[str, Edit, str, frozenset[Side]]] = [
    ("topic removed", _drop_topic, "levelup", BOTH),
    ("topic added", _add_topic, "new_thing", NOBODY),
    ("pattern changed", _set("levelup", topic="stats/level_up"), "levelup", BOTH),
    ("kind changed", _set("levelup", kind="state"), "levelup", BOTH),
    ("qos lowered", _set("levelup", qos=0), "levelup", BOTH),
    ("retain turned on", _set("levelup", retain=True), "levelup", BOTH),
    ("format changed", _set("levelup", format="text"), "levelup", BOTH),
    ("publisher removed", _set("activities_log", publishers=["lifeops"]), "activities_log", PUB),
    ("publisher added", _set("levelup", publishers=["stats", "tester"]), "levelup", NOBODY),
    ("subscriber removed", _set("levelup", subscribers=["ha_bridge"]), "levelup", SUB),
    ("own_only on", _set("levelup", own_only=True), "levelup", SUB),
    ("timeout shorter", _set("activities_log", timeout_s=1.0), "activities_log", SUB),
    ("timeout longer", _set("activities_log", timeout_s=60.0), "activities_log", NOBODY),
    ("reply removed", _reply_removed, "character_get", PUB),
    ("new optional field", _new_optional, "levelup payload.mood", NOBODY),
    ("new required field", _new_required, "levelup payload.mood", PUB),
    ("field removed", _remove_field, "levelup payload.", SUB),
    ("field retyped", _retype, "activities_log payload.activity_type", BOTH),
    ("enum widened", _widen_enum, "activities_log payload.source", SUB),
    ("length narrowed", _narrow_length, "activities_log payload.activity_type", PUB),
    ("optional made required", _optional_to_required, "activities_log payload.activity_id", PUB),
    ("required made optional", _required_to_optional, "activities_log payload.activity_type", SUB),
    ("reply field removed", _reply_field_removed, "character_get reply.character", PUB),
    ("reply gains a required field", _reply_new_required, "character_get reply.etag", SUB),
    ("nested struct field retyped", _nested_field_retyped, "character_state payload.", BOTH),
]


@pytest.mark.parametrize(
    ("name", "edit", "where", "breaks"), CATALOGUE, ids=[c[0] for c in CATALOGUE]
)
def test_each_change_is_classified(
    name: str, edit: Edit, where: str, breaks: frozenset[Side]
) -> None:
    old = contract_source.current()
    new = copy(old)
    edit(new)
    changes = diff(old, new)
    assert changes, f"{name}: no change found"
    mine = [c for c in changes if c.where.startswith(where)]
    assert mine, f"{name}: nothing at {where!r} in {[c.line() for c in changes]}"
    assert {c.breaks for c in mine} == {breaks}, [c.line() for c in mine]


def test_no_change_is_no_change() -> None:
    assert diff(contract_source.current(), contract_source.current()) == []


def test_breaking_lines_come_first_and_name_the_change() -> None:
    old = contract_source.current()
    new = copy(old)
    _add_topic(new)
    _retype(new)
    lines = [c.line() for c in diff(old, new)]
    assert lines[0].startswith("BREAKING for publishers and subscribers: activities_log payload")
    assert lines[-1] == "compatible: new_thing: topic stats/new added"
    assert Change("x", "y").line() == "compatible: x: y"


def test_the_released_snapshot_is_this_major_version_and_nothing_breaks_it() -> None:
    """CI's compatibility gate: the last released contract (lifeops_contract/released/) against
    this one. A breaking change must come with [meta] version raised and a new snapshot."""
    version = contract().meta.version
    snapshot = RELEASED / f"v{version}.json"
    assert snapshot.exists(), (
        f"no released snapshot for contract version {version}: write it with "
        f"`lifeops-mesh contract snapshot --write {snapshot.relative_to(ROOT)}`"
    )
    released = decode(snapshot.read_bytes())
    assert released.contract_version == version
    breaking = [c.line() for c in diff(released, contract_source.current()) if c.breaking]
    assert breaking == [], "a contract change breaks a consumer of the last release"


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", "contract", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_exits_1_naming_a_breaking_change_in_a_topics_toml_copy(tmp_path: Path) -> None:
    text = (ROOT / "topics.toml").read_text()
    changed = tmp_path / "topics.toml"
    changed.write_text(text.replace('topic = "stats/levelup"', 'topic = "stats/level_up"', 1))
    done = _cli("diff", str(ROOT / "topics.toml"), str(changed))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BREAKING for publishers and subscribers: levelup: topic 'stats/levelup'" in done.stdout
    assert "major version raised" in done.stderr
    # The same change with the major version raised passes (and still says what it breaks).
    bumped = tmp_path / "bumped.toml"
    bumped.write_text(changed.read_text().replace("version = 1", "version = 2", 1))
    done = _cli("diff", str(ROOT / "topics.toml"), str(bumped))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 breaking, 0 compatible (contract version 1 -> 2)" in done.stdout


def test_cli_against_the_previous_commit() -> None:
    """What CI runs on every commit: the contract of HEAD~1 against this one."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "HEAD~1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert head.returncode == 0, "the checkout has no previous commit (a shallow clone?)"
    done = _cli("diff", "--against", "HEAD~1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "breaking," in done.stdout


def test_cli_against_an_unknown_revision_is_one_clear_line() -> None:
    done = _cli("diff", "--against", "no-such-ref")
    assert done.returncode == 2
    assert "no git revision 'no-such-ref'" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_against_a_revision_reads_that_revisions_own_schemas(tmp_path: Path) -> None:
    """--against exports the old tree and imports its own lifeops_contract: a payload field
    widened in a commit (int -> float) is a breaking change against the commit before."""
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=120)
    schemas = repo / "lifeops_contract" / "schemas.py"
    text = schemas.read_text()
    anchor = "    new_level: int\n    previous_level: int\n"
    assert anchor in text
    schemas.write_text(text.replace(anchor, "    new_level: float\n    previous_level: int\n", 1))
    subprocess.run([*git, "commit", "-qam", "LevelUp.new_level"], check=True, timeout=60)
    done = _cli("diff", "--against", "HEAD~1", cwd=repo)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BREAKING for subscribers: levelup payload.new_level: type widened" in done.stdout
