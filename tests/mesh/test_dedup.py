"""The `dedup` expression of a topics.toml entry: its grammar, the keys it builds, and the
contract refusing an expression it cannot build keys from."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pytest

import lifeops_contract
from mesh import KEYLESS, NO_CLAIM, ContractError
from mesh.dedup import dedup_problems, parse_dedup

ROOT = Path(__file__).resolve().parents[2]


class Msg(msgspec.Struct, kw_only=True):
    a: str | None = None
    b: str | None = None
    day: dt.date | None = None
    n: int = 0


def test_none_and_a_missing_expression_claim_nothing() -> None:
    assert parse_dedup(None) is NO_CLAIM
    assert parse_dedup("none") is NO_CLAIM
    assert not NO_CLAIM.claims
    with pytest.raises(ContractError, match="claims nothing"):
        NO_CLAIM.key(Msg())


def test_keyless_always_derives() -> None:
    rule = parse_dedup("keyless")
    assert rule.claims and rule.key(Msg(a="x")) is KEYLESS


def test_the_first_present_alternative_is_the_key() -> None:
    rule = parse_dedup("ns: a | b + n")
    assert rule.fields == ["a", "b", "n"]
    assert rule.key(Msg(a="1", b="2")) == "ns:1"
    assert rule.key(Msg(a="", b="2")) == "ns:2:0"  # empty is absent; 0 is a value
    assert rule.key(Msg(b="2", n=5)) == "ns:2:5"
    assert rule.key(Msg()) is KEYLESS  # no alternative present: the derived key


def test_no_namespace_and_optional_labelled_fields() -> None:
    rule = parse_dedup("a+day+v{n}?")
    day = dt.date(2026, 11, 26)
    assert rule.key(Msg(a="x", day=day)) == "x:2026-11-26"
    assert rule.key(Msg(a="x", day=day, n=3)) == "x:2026-11-26:v3"
    assert rule.key(Msg(a="x")) is KEYLESS
    assert parse_dedup("a+n?").key(Msg(a="x", n=2)) == "x:2"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a+", "'' is no payload field"),
        ("a||b", "'' is no payload field"),
        ("a-b", "'a-b' is no payload field"),
        ("ns:Upper", "'Upper' is no payload field"),
        ("a|n?", "needs a field not \\?"),
        ("{a}x", "is no payload field"),
    ],
)
def test_bad_expressions_are_refused_naming_the_part(text: str, why: str) -> None:
    with pytest.raises(ContractError, match=why):
        parse_dedup(text)


def test_fields_are_checked_against_the_schema() -> None:
    assert dedup_problems(parse_dedup("ns:a|b+v{n}?"), Msg) == []
    assert dedup_problems(parse_dedup("a+when"), Msg) == ["dedup 'a+when': Msg has no field 'when'"]
    no_fields = ["dedup 'a' names fields but the payload has none"]
    assert dedup_problems(parse_dedup("a"), str) == no_fields
    assert dedup_problems(NO_CLAIM, str) == []


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("oura:user_id+day", "OuraSynced has no field 'day'"),
        ("oura:user_id+", "'' is no payload field"),
    ],
)
def test_the_contract_does_not_load_with_a_bad_expression(
    tmp_path: Path, expression: str, problem: str
) -> None:
    text = (ROOT / "topics.toml").read_text()
    old = 'dedup = "oura:user_id+date+rev{revision}?"'
    assert old in text
    (tmp_path / "topics.toml").write_text(text.replace(old, f'dedup = "{expression}"'))
    with pytest.raises(ContractError, match=f"topics.oura_synced: .*{problem}"):
        lifeops_contract.load(tmp_path / "topics.toml")
