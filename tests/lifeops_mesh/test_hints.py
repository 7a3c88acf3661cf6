"""Every `lifeops-mesh` command the docs and the CLI's own messages tell a user to run is a
command the CLI takes as written: its subcommand and flags exist and its values fit.

Sources: the bash blocks and inline code of README.md, docs/*.md and the app's DOCS.md (syntax
summaries with `[...]`, `|` or `<...>` left out), the steps `broker accounts` prints, and the
fixes `doctor` suggests. Commands are parsed by the CLI's own parser, not run (the tests that
walk each path run them: test_listen.py, deploy/test_mosquitto_addon.py, test_wheel.py,
test_readme.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lifeops_mesh.cli import parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS.append(ROOT / "deploy" / "homeassistant-addon" / "DOCS.md")


def _clean(command: str) -> str | None:
    command = re.sub(r"\$\([^)]*\)", "X", command)  # a shell substitution: some value
    command = re.split(r"\s+(?:#|>|\|\||\||&&)\s*", command.strip())[0].strip()
    if any(s in command for s in ("[", "<", "...", "{")):
        return None  # a syntax summary or a template, not a command
    return command


def documented() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.splitlines():
                if line.startswith("lifeops-mesh ") and (c := _clean(line)):
                    found.append((path.relative_to(ROOT).as_posix(), c))
        for span in re.findall(r"`(lifeops-mesh [^`]+)`", text.replace("\n", " ")):
            if c := _clean(span):
                found.append((path.relative_to(ROOT).as_posix(), c))
    return sorted(set(found))


def printed(tmp: Path) -> list[tuple[str, str]]:
    """The commands in the steps `broker accounts` prints, for both targets."""
    found = []
    for target, extra in (("mosquitto-addon", []), ("mosquitto", ["--out", str(tmp / "out")])):
        out = subprocess.run(
            [sys.executable, "-m", "lifeops_mesh", "broker", "accounts", "--for", target,
             "--credentials", str(tmp / "accounts.toml"), *extra],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        found += [(f"broker accounts --for {target}", c) for c in _commands_in(out)]
    return found


def _commands_in(text: str) -> list[str]:
    """The `lifeops-mesh ...` spans of a message, else each `lifeops-mesh ...` to the line's
    (or the sentence's) end."""
    found = re.findall(r"`(lifeops-mesh [^`]+)`", text) or re.findall(
        r"(lifeops-mesh [^\n`;]+)", text
    )
    return [c for m in found if (c := _clean(m))]


def doctor_fixes() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "lifeops_mesh" / "tools" / "doctor").glob("*.py")):
        for fix in re.findall(r'fix=f?"([^"]*lifeops-mesh [^"]*)"', path.read_text()):
            for command in _commands_in(fix.replace("{agent}", "stats")):
                found.append((path.name, command.rstrip("`")))
    return found


def parses(command: str) -> str:
    """'' when the CLI's parser takes `command`, else what it said. A bare `lifeops-mesh
    <command> [<subcommand>]` in prose names the command (it must exist; its required flags may
    be left out); a word in capitals is a placeholder for a value the user picks, so it may
    stand where the parser wants one of its choices."""
    words = shlex.split(command)[1:]
    if len(words) == 1:
        return "" if words[0] in _commands() else f"no command {words[0]!r}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser().parse_args(words)
        except SystemExit as exc:
            said = err.getvalue().strip() or f"exit {exc.code}"
            choice = re.search(r"invalid choice: '([A-Z_]+)'", said)
            if choice and choice.group(1) in words:
                return ""
            # `lifeops-mesh oura login` in prose names a command without its required flags
            named = "arguments are required" in said and not any(w[0] == "-" for w in words)
            return "" if named else said
    return ""


def _commands() -> set[str]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_sources_hold_the_commands_that_matter(tmp_path: Path) -> None:
    """The collection finds the commands the Connect section and the CLI give (so the check
    below cannot pass by finding nothing)."""
    commands = {c for _, c in documented() + printed(tmp_path) + doctor_fixes()}
    for expected in (
        "lifeops-mesh broker accounts --for mosquitto-addon",
        "lifeops-mesh up --listen 0.0.0.0 --data ~/lifeops",
        "lifeops-mesh up --broker mqtt://HOME_ASSISTANT_ADDRESS:1883 --credentials "
        "data/mesh-accounts.toml",
        "lifeops-mesh broker acl",
        "lifeops-mesh run stats",
    ):
        assert expected in commands, sorted(commands)


def test_every_command_parses(tmp_path: Path) -> None:
    bad = [
        f"{where}: {command}: {said}"
        for where, command in documented() + printed(tmp_path) + doctor_fixes()
        if (said := parses(command))
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "command",
    [
        "lifeops-mesh up --colour red",
        "lifeops-mesh oura logon",
        "lifeops-mesh oura login --usr alice",
        "lifeops-mesh brokers acl",
        "lifeops-mesh up --port N",
        "lifeops-mesh brokers",
        "lifeops-mesh broker accounts --for mosquito",
    ],
)
def test_the_check_catches_a_wrong_command(command: str) -> None:
    assert parses(command)


def test_the_readme_leads_with_connecting_home_assistant() -> None:
    """The first section after the two commands: the three paths, each with its commands."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections[0] == "Connect your Home Assistant", sections[:3]
    connect = text.split("## Connect your Home Assistant", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"^### (.+)$", connect, re.M)
    assert [p[:2] for p in paths] == ["A.", "B.", "C."], paths
    assert "Repositories" in connect and "--for mosquitto-addon" in connect
    assert "--listen 0.0.0.0" in connect
