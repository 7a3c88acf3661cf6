"""The contract: topics.toml is sound, examples validate, the ACL and the code follow it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lifeops_contract
from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import SCHEMAS
from lifeops_mesh.broker import acl_file
from mesh import codec
from mesh.broker.acl import generate_acl
from mesh.contract import check_level
from mesh.errors import ContractError

ROOT = Path(__file__).resolve().parents[2]
SEED_TOPICS = {
    "lifeops/activity/completed",
    "lifeops/oura/synced",
    "stats/levelup",
    "stats/achievement",
    "stats/activities/log",
    "{agent}/status",
    "mesh/dlq/{agent}",
}


def test_contract_loads_without_problems() -> None:
    """topics.toml loads and its own consistency checks find nothing."""
    contract = lifeops_contract.load(ROOT / "topics.toml")
    assert contract.problems() == []
    assert {e.topic for e in contract.topics.values()} >= SEED_TOPICS


def test_every_topic_names_an_existing_schema_and_its_example_validates() -> None:
    """Each entry's schema (and reply schema) exists in the contract's schemas or the
    runtime's; each example decodes."""
    schemas = default_contract().schemas
    assert set(SCHEMAS) <= set(schemas)
    for key, entry in default_contract().topics.items():
        assert entry.schema in schemas, key
        if entry.reply_schema:
            assert entry.reply_schema in schemas, key
            assert entry.timeout_s and entry.timeout_s > 0, key
        codec.decode(entry.example.encode(), entry.schema_type, entry.format)
        assert entry.description.strip(), key


def test_seed_topics_use_qos_1() -> None:
    """The seed contract's topics are QoS 1; availability is retained, requests are not."""
    c = default_contract()
    for e in c.topics.values():
        if e.topic in SEED_TOPICS:
            assert e.qos == 1, e.topic
    assert c.entry("status").retain is True
    assert c.entry("activities_log").retain is False
    assert c.entry("activities_log").kind == "request"


def test_broken_contract_is_reported(tmp_path: Path) -> None:
    """A missing schema, a bad example, an unknown principal and a request without timeout fail."""
    text = (ROOT / "topics.toml").read_text()
    text = text.replace('schema = "OuraSynced"', 'schema = "NoSuchSchema"')
    text = text.replace('"source_ref": "gym-2026-11-27"', '"source_ref": 42')
    text = text.replace('publishers = ["lifeops"]', 'publishers = ["mallory"]', 1)
    path = tmp_path / "topics.toml"
    path.write_text(text)
    with pytest.raises(ContractError) as err:
        lifeops_contract.load(path)
    msg = str(err.value)
    assert "NoSuchSchema" in msg
    assert "topics.activities_log: example does not match" in msg
    assert "unknown principal 'mallory'" in msg


def test_committed_acl_is_the_generated_one() -> None:
    """broker/acl equals `lifeops-mesh broker acl` (regenerate it when topics.toml changes)."""
    assert (ROOT / "broker" / "acl").read_text() == generate_acl(default_contract())
    assert acl_file().read_text() == generate_acl(default_contract())  # what the package ships


def test_acl_gives_each_agent_exactly_its_rights() -> None:
    """Stats may publish level-ups but not completions; LifeOps the other way round."""
    acl = generate_acl(default_contract())
    blocks = {b.split("\n")[0]: b for b in acl.split("\n\n") if b.startswith("user ")}
    assert "topic write stats/levelup" in blocks["user stats"]
    assert "lifeops/activity/completed" in blocks["user stats"]
    assert "topic read lifeops/activity/completed" in blocks["user stats"]
    assert "stats/levelup" not in blocks["user lifeops"].replace("topic read stats/levelup", "")
    assert "topic write stats/status" in blocks["user stats"]
    assert "topic write lifeops/status" not in blocks["user stats"]
    assert "topic read reply/tester/+" in blocks["user tester"]
    assert "reply/stats" not in blocks["user tester"]


def test_topic_rendering_refuses_unsafe_levels() -> None:
    """Parameters carrying wildcards, '/', NUL, '$' or nothing cannot become a topic level."""
    c = default_contract()
    assert c.topic("character_state", user_id="alice") == "stats/character/alice"
    for bad in ["a+b", "#", "a/b", "a\x00b", "$SYS", "", "x" * 200]:
        with pytest.raises(ContractError):
            c.topic("character_state", user_id=bad)
    with pytest.raises(ContractError):
        check_level("+")


def test_matching_prefers_literal_topics() -> None:
    """stats/character/get is the request, not the state of a user called 'get'."""
    c = default_contract()
    found = c.match("stats/character/get")
    assert found is not None and found[0].key == "character_get"
    found = c.match("stats/character/alice")
    assert found is not None and found[0].key == "character_state"
    assert found[1] == {"user_id": "alice"}
    assert c.match("stats/nothing/here") is None
    assert c.publisher_allowed("stats", "stats/status")
    assert not c.publisher_allowed("stats", "lifeops/status")
    assert not c.publisher_allowed("stats", "lifeops/activity/completed")


def _publish_calls(path: Path) -> list[tuple[int, ast.Call]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and (node.func.attr in ("publish", "emit", "request"))
        ):
            out.append((node.lineno, node))
    return out


def test_agent_code_publishes_only_by_declared_contract_keys() -> None:
    """Agent packages publish through emit/publish/request with a literal key their agent may use.

    Runtime modules publish only to topics they compute from the contract (checked at runtime by
    Contract.resolve and Contract.check_publish); agent code must never pass a topic string.
    """
    c = default_contract()
    agents = {"stats_agent": "stats"}
    checked = 0
    for package, agent in agents.items():
        for path in (ROOT / package).rglob("*.py"):
            for lineno, call in _publish_calls(path):
                assert call.args, f"{path}:{lineno}: publish without a contract key"
                key = call.args[0]
                assert isinstance(key, ast.Constant) and isinstance(key.value, str), (
                    f"{path}:{lineno}: the contract key must be a literal string"
                )
                entry = c.entry(key.value)
                assert agent in entry.publishers, (
                    f"{path}:{lineno}: {agent} may not publish {key.value}"
                )
                checked += 1
    assert checked >= 3


def test_docs_topic_table_is_generated_from_the_contract() -> None:
    """docs/contract.md's topic table equals `lifeops-mesh contract docs` (update with
    `--write docs/contract.md`)."""
    from lifeops_mesh.tools.contract_docs import render_into

    page = (ROOT / "docs" / "contract.md").read_text()
    assert render_into(page, default_contract()) == page


def test_contract_docs_write_renews_the_table_of_a_page(tmp_path: Path) -> None:
    """`lifeops-mesh contract docs --write FILE` replaces a stale table between the markers and
    leaves the rest of the page as it was."""
    from lifeops_mesh.cli import parser

    page = (ROOT / "docs" / "contract.md").read_text()
    stale = page.replace("| `stats/levelup` | event |", "| `stats/gone` | event |")
    assert stale != page
    copy = tmp_path / "contract.md"
    copy.write_text(stale)
    args = parser().parse_args(["contract", "docs", "--write", str(copy)])
    assert args.func(args) == 0
    assert copy.read_text() == page


def test_discovery_prefix_moves_home_assistant_topics_and_their_acl() -> None:
    """LIFEOPS_HA_DISCOVERY_PREFIX / --discovery-prefix: the bridge's contract and the ACL use
    the new prefix for discovery configs and HA's birth, nothing else changes."""
    from mesh.broker.acl import generate_acl

    c = default_contract()
    moved = lifeops_contract.with_discovery_prefix(c, "hass")
    assert moved.topic("ha_status") == "hass/status"
    assert (
        moved.topic("ha_discovery", component="sensor", node_id="n", object_id="o")
        == "hass/sensor/n/o/config"
    )
    changed = {k for k in c.topics if c.topics[k].topic != moved.topics[k].topic}
    assert changed == {"ha_status", "ha_discovery", "ha_device_discovery"}
    assert moved.topic("ha_device_discovery", node_id="n") == "hass/device/n/config"
    assert moved.publisher_allowed("ha_bridge", "hass/sensor/lifeops_a/level/config")
    acl = generate_acl(moved)
    assert "topic readwrite hass/+/+/+/config" in acl and "homeassistant/" not in acl
    assert lifeops_contract.with_discovery_prefix(c, "homeassistant") is c
