"""The repository as Home Assistant's Supervisor sees it when a user adds its URL.

The Supervisor (home-assistant/supervisor, supervisor/store/: git.py, data.py, validate.py;
supervisor/apps/build.py) clones the repository (`git clone --recursive --depth 1`), reads the
first `repository.(yaml|yml|json)` it finds (name required; url, maintainer optional), takes
every `config.(yaml|yml|json)` outside dot folders and `rootfs/` for an app, and builds each app
with its own folder as the Docker build context (`Dockerfile.<arch>`, else `Dockerfile`; build
arguments BUILD_VERSION and BUILD_ARCH). Nothing runs before the build, so everything the
Dockerfile copies must be in that folder, in git.

The test does the same on a clone of this repository's HEAD (commit first), and checks that the
committed wheel is what the current source builds (file list and each file's SHA-256; zip
timestamps aside), as the ACL drift test does for broker/acl.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.addon_schema import config_errors, translation_errors
from tests.support.yaml_subset import parse_yaml

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "deploy" / "homeassistant-addon"
SUFFIXES = (".yaml", ".yml", ".json")
REPOSITORY_KEYS = {"name": str, "url": str, "maintainer": str}  # store/validate.py


def read_config(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else parse_yaml(text)


def repository_errors(data: Any) -> list[str]:
    """SCHEMA_REPOSITORY_CONFIG: `name` (str) required, `url` (a URL) and `maintainer` (str)
    optional; anything else is dropped by the Supervisor, so flagged here."""
    if not isinstance(data, dict):
        return ["repository file is not a mapping"]
    errors = [] if isinstance(data.get("name"), str) and data["name"].strip() else ["no name"]
    for key, value in data.items():
        if key not in REPOSITORY_KEYS:
            errors.append(f"unknown key {key!r} (dropped by the Supervisor)")
        elif not isinstance(value, REPOSITORY_KEYS[key]):
            errors.append(f"{key} must be a string")
    if "url" in data and not re.match(r"^https?://\S+$", str(data["url"])):
        errors.append(f"url {data['url']!r} is not a URL")
    return errors


def app_configs(repo: Path) -> list[Path]:
    """store/data.py _find_app_configs."""
    return sorted(
        p
        for p in repo.glob("**/config.*")
        if p.suffix in SUFFIXES
        and not any(part.startswith(".") or part == "rootfs" for part in p.relative_to(repo).parts)
    )


def dockerfile_sources(text: str) -> list[str]:
    """The sources of every COPY and ADD (shell or JSON form; flags such as --chown skipped);
    `COPY --from=<stage>` copies from an image, not the context, and is left out."""
    text = re.sub(r"\\\n", " ", text)
    sources: list[str] = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) < 2 or words[0].upper() not in ("COPY", "ADD"):
            continue
        rest = words[1].strip()
        flags = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if any(f.startswith("--from=") for f in flags):
            continue
        args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        sources += args[:-1]
    return sources


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the Supervisor has after adding the repository: a shallow clone of HEAD."""
    dest = tmp_path_factory.mktemp("supervisor") / "repository"
    subprocess.run(
        ["git", "clone", "--quiet", "--recursive", "--depth", "1", f"file://{ROOT}", str(dest)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return dest


def test_the_repository_file_is_found_and_valid(clone: Path) -> None:
    found = [p for p in clone.glob("**/repository.*") if p.suffix in SUFFIXES]
    assert [p.relative_to(clone).as_posix() for p in found] == ["repository.yaml"]
    data = read_config(found[0])
    assert repository_errors(data) == []
    assert yaml.safe_load(found[0].read_text(encoding="utf-8")) == data  # as the Supervisor reads


def test_the_checker_of_repository_files_catches_mistakes() -> None:
    assert repository_errors({"name": "x", "url": "https://example.org/r"}) == []
    errors = repository_errors({"url": "not a url", "colour": "x"})
    assert "no name" in errors
    assert "url 'not a url' is not a URL" in errors
    assert "unknown key 'colour' (dropped by the Supervisor)" in errors


def test_each_app_is_valid_and_its_folder_is_a_complete_build_context(clone: Path) -> None:
    """Every app the Supervisor would find: config and translations valid, a Dockerfile for
    each arch, every file it copies present in the app's folder of the clone (the build
    context), nothing in the folder linking outside it, and the wheel of the app's version."""
    configs = app_configs(clone)
    assert [c.relative_to(clone).as_posix() for c in configs] == [
        "deploy/homeassistant-addon/config.yaml"
    ]
    for config in configs:
        app = config.parent
        cfg = read_config(config)
        assert config_errors(cfg) == [], config
        translations = app / "translations" / "en.yaml"
        if translations.exists():
            assert translation_errors(read_config(translations), cfg) == []
        for arch in cfg["arch"]:
            dockerfile = app / f"Dockerfile.{arch}"
            dockerfile = dockerfile if dockerfile.exists() else app / "Dockerfile"
            assert dockerfile.is_file(), f"{app}: no Dockerfile for {arch}"
            sources = dockerfile_sources(dockerfile.read_text(encoding="utf-8"))
            assert sources, dockerfile
            for source in sources:
                assert not Path(source).is_absolute() and ".." not in Path(source).parts, source
                assert glob.glob(str(app / source)), f"{dockerfile.name} copies {source}: missing"
        for path in app.rglob("*"):
            if path.is_symlink():
                target = (path.parent / os.readlink(path)).resolve()
                assert target.is_relative_to(app.resolve()), f"{path} links outside the app"
        wheel = app / "wheels" / f"lifeops_mesh-{cfg['version']}-py3-none-any.whl"
        assert wheel.is_file(), f"{wheel.name} is not committed: run {app.name}/prepare.sh"
        assert zipfile.ZipFile(wheel).testzip() is None
        assert (
            f"lifeops_mesh-{cfg['version']}.dist-info/METADATA" in zipfile.ZipFile(wheel).namelist()
        )


def test_dockerfile_source_parser() -> None:
    text = (
        "FROM x\nCOPY wheels/ /tmp/wheels/\nCOPY --chown=1:1 run.py /run.py\n"
        'ADD ["a b", "c", "/dest/"]\nCOPY --from=build /x /y\nCOPY \\\n  rootfs /\n'
    )
    assert dockerfile_sources(text) == ["wheels/", "run.py", "a b", "c", "rootfs"]


def _contents(wheel: Path) -> dict[str, str]:
    """name -> SHA-256 of every file of the wheel but RECORD (which lists the others' hashes
    and sizes). WHEEL names the setuptools release: prepare.sh pins it."""
    with zipfile.ZipFile(wheel) as archive:
        return {
            name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in archive.namelist()
            if not name.endswith(".dist-info/RECORD")
        }


def test_the_committed_wheel_is_what_the_source_builds(tmp_path: Path) -> None:
    """prepare.sh into a temporary folder, compared file by file with the committed wheel;
    exactly one wheel is committed, of the app's version."""
    committed = sorted((ADDON / "wheels").glob("*.whl"))
    version = parse_yaml((ADDON / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(version, dict)
    assert [w.name for w in committed] == [f"lifeops_mesh-{version['version']}-py3-none-any.whl"]
    env = {**os.environ, "PYTHON": sys.executable, "LIFEOPS_WHEEL_DIR": str(tmp_path)}
    built = subprocess.run(
        ["sh", str(ADDON / "prepare.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (fresh,) = tmp_path.glob("*.whl")
    assert fresh.name == committed[0].name
    old, new = _contents(committed[0]), _contents(fresh)
    stale = sorted(n for n in old.keys() | new.keys() if old.get(n) != new.get(n))
    assert not stale, (
        f"the committed {fresh.name} differs from the source in {stale[:10]}: run "
        "deploy/homeassistant-addon/prepare.sh and commit deploy/homeassistant-addon/wheels/"
    )
    size = committed[0].stat().st_size
    print(f"committed wheel: {size / 1024:.0f} KiB, {len(old)} files")
    assert size < 1_000_000, size  # the repository carries it in every version
