"""The container images (images/*/Dockerfile), read statically since no image can be built
here: pinned bases, a non-root user that matches the charts, no secrets, only files that
exist, the commands the charts run, and workload images that carry the clients but no server."""

from __future__ import annotations

import configparser
import fnmatch
import re
import shlex
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.deploy.charts import CHARTS, REPO
from tests.workload_imports import (
    ENTRY_POINTS,
    FIRST_PARTY,
    first_party,
    loaded_modules,
    module_file,
    server_libraries,
)

IMAGES = sorted(p.parent.name for p in (REPO / "images").glob("*/Dockerfile"))
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|API_KEY|CREDENTIAL)",
                         re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    stage: int


def instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, each tagged with the build stage it belongs to."""
    result: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, args.strip(), stage))
    assert not pending, f"{path}: dangling line continuation"
    return result


def _flags_and_words(args: str) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    words = []
    for word in shlex.split(args):
        if word.startswith("--"):
            key, _, value = word[2:].partition("=")
            flags[key] = value
        else:
            words.append(word)
    return flags, words


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore excludes a path (last matching pattern wins)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path, *[path[: i] for i in range(len(path)) if path[i] == "/"]]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in path.split("/"))
        else:
            hit = any(fnmatch.fnmatch(c, pattern) for c in candidates)
        if hit:
            ignored = not negate
    return ignored


def _dockerignore(image: str) -> list[str]:
    path = REPO / "images" / image / "Dockerfile.dockerignore"
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned(image: str) -> None:
    earlier_stages: set[str] = set()
    for ins in instructions(REPO / "images" / image / "Dockerfile"):
        if ins.keyword != "FROM":
            continue
        _flags, words = _flags_and_words(ins.args)
        base = words[0]
        if base not in earlier_stages:
            assert "$" not in base, f"{image}: base image {base} comes from a build argument"
            last = base.split("/")[-1]
            tag = last.partition(":")[2].partition("@")[0]
            assert tag, f"{image}: base image {base} has no tag"
            assert "latest" not in tag, f"{image}: {base}"
            assert re.search(r"\d", tag), f"{image}: tag of {base} names no version"
        if len(words) >= 3 and words[1].upper() == "AS":
            earlier_stages.add(words[2])


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_runs_as_a_non_root_user(image: str) -> None:
    steps = instructions(REPO / "images" / image / "Dockerfile")
    last_stage = steps[-1].stage
    users = [i.args for i in steps if i.keyword == "USER" and i.stage == last_stage]
    assert users, f"{image}: the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{image}: runs as {user}"
    assert user.isdigit() and int(user) >= 1000, \
        f"{image}: give USER as a number, so Kubernetes can check runAsNonRoot"


def test_image_users_match_the_charts() -> None:
    def uid(image: str) -> int:
        steps = instructions(REPO / "images" / image / "Dockerfile")
        return int([i.args for i in steps if i.keyword == "USER"][-1].split(":")[0])

    platform = yaml.safe_load((CHARTS / "platform" / "values.yaml").read_text())
    desktop = yaml.safe_load((CHARTS / "desktop" / "values.yaml").read_text())
    assert uid("services") == platform["podSecurityContext"]["runAsUser"]
    assert uid("desktop") == desktop["podSecurityContext"]["runAsUser"]
    # Desktops and jobs share the researcher's home: one uid for all workload images.
    assert uid("batch-python") == uid("batch-spark") == uid("desktop")


@pytest.mark.parametrize("image", IMAGES)
def test_no_secret_is_baked_in(image: str) -> None:
    for ins in instructions(REPO / "images" / image / "Dockerfile"):
        if ins.keyword in ("ENV", "ARG"):
            for word in shlex.split(ins.args):
                name, _, value = word.partition("=")
                assert not (SECRET_NAME.search(name) and value), f"{image}: {word}"
        if ins.keyword in ("COPY", "ADD"):
            _flags, words = _flags_and_words(ins.args)
            for source in words[:-1]:
                assert not re.search(r"(\.env$|\.pem$|id_rsa|secrets?/|^var/)", source), \
                    f"{image}: copies {source}"
        assert ins.keyword != "ADD", f"{image}: use COPY (ADD fetches URLs and unpacks)"
    text = (REPO / "images" / image / "Dockerfile").read_text()
    assert not re.search(r"VRE_(SECRET_KEY|SERVICE_SECRET|CHAIN_PRIVATE_KEY|DATABASE_URL)", text)


@pytest.mark.parametrize("image", IMAGES)
def test_copied_paths_exist_and_reach_the_build(image: str) -> None:
    """The build context is the repository root; what a COPY names must be there, and not
    be left out by the image's .dockerignore."""
    patterns = _dockerignore(image)
    assert _ignored("var/secrets/platform.json", patterns)
    assert _ignored(".venv/bin/python", patterns) and _ignored("node_modules/x", patterns)
    for ins in instructions(REPO / "images" / image / "Dockerfile"):
        if ins.keyword != "COPY":
            continue
        flags, words = _flags_and_words(ins.args)
        if "from" in flags:
            continue
        for source in words[:-1]:
            assert (REPO / source).exists(), f"{image}: COPY {source}: no such path"
            assert not _ignored(source.rstrip("/"), patterns), \
                f"{image}: COPY {source} is excluded by Dockerfile.dockerignore"


def test_the_services_image_has_every_command_the_chart_runs() -> None:
    steps = instructions(REPO / "images" / "services" / "Dockerfile")
    final = [i for i in steps if i.stage == steps[-1].stage]
    entrypoint = next(i.args for i in final if i.keyword == "ENTRYPOINT")
    assert yaml.safe_load(entrypoint) == ["vre"]
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "PATH=/opt/vre/bin:$PATH" in env
    copied = {shlex.split(i.args)[-1] for i in final if i.keyword == "COPY"}
    assert "/opt/vre/bin/vre-platform-secrets" in copied
    assert "/usr/local/bin/helm" in copied and "/opt/vre/charts/desktop" in copied
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    scripts = {line.split("=")[0].strip()
               for line in setup["options.entry_points"]["console_scripts"].splitlines()
               if line.strip()}
    # What the platform chart's containers and jobs call.
    assert {"vre", "vre-trace"} <= scripts
    chart_commands = set()
    for template in (CHARTS / "platform" / "templates").glob("*.yaml"):
        for match in re.finditer(r"command: \[([^\]]+)\]", template.read_text()):
            chart_commands.add(match.group(1).split(",")[0].strip())
    assert chart_commands <= {"vre", "python", "vre-platform-secrets", "vre-trace"}


def test_the_desktop_keeps_its_clipboard_in() -> None:
    steps = instructions(REPO / "images" / "desktop" / "Dockerfile")
    entrypoint = yaml.safe_load(next(i.args for i in steps if i.keyword == "ENTRYPOINT"))
    assert entrypoint == ["/usr/local/bin/start-display"]
    script = (REPO / "images" / "desktop" / "start-display.sh").read_text()
    xvnc = script[script.index("Xvnc "):script.index("&\n", script.index("Xvnc "))]
    assert "-SendCutText=0" in xvnc and "-AcceptCutText=1" in xvnc
    assert "-AllowOverride=desktop" in xvnc, "an X client could turn copy-out back on"
    assert "-SecurityTypes VncAuth" in xvnc
    run = " ".join(i.args for i in steps if i.keyword == "RUN")
    for package in ("tigervnc-standalone-server", "tigervnc-tools", "openbox", "xterm",
                    "x11-utils", "aeskulap", "amide", "dcmtk", "dcm2niix"):
        assert package in run
    assert "batch_tools" in " ".join(i.args for i in steps if i.keyword == "COPY")


def test_the_batch_images_offer_cpu_and_gpu_torch_and_java_17_spark() -> None:
    python = (REPO / "images" / "batch-python" / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cpu" in python
    assert re.search(r"cpu\)", python) and re.search(r"gpu\)", python)
    setup = (REPO / "setup.cfg").read_text()
    pinned = re.search(r"torch==([\d.]+)", setup)
    assert pinned and f"ARG TORCH_VERSION={pinned.group(1)}" in python
    spark = (REPO / "images" / "batch-spark" / "Dockerfile").read_text()
    assert "openjdk-17-jre-headless" in spark and "JAVA_HOME=/opt/java" in spark
    assert re.search(r"ARG PYSPARK_VERSION=3\.5\.\d+", spark)


WORKLOAD_IMAGES = ("desktop", "batch-python", "batch-spark")


def _copied_sources(image: str) -> set[str]:
    """The repository files the image's COPY instructions take (folders expanded)."""
    files: set[str] = set()
    for ins in instructions(REPO / "images" / image / "Dockerfile"):
        flags, words = _flags_and_words(ins.args)
        if ins.keyword != "COPY" or "from" in flags:
            continue
        for source in words[:-1]:
            path = REPO / source
            found = path.rglob("*") if path.is_dir() else [path]
            files |= {p.relative_to(REPO).as_posix() for p in found
                      if p.is_file() and "__pycache__" not in p.parts}
    return files


@pytest.fixture(scope="module")
def workload_modules() -> set[str]:
    """Every module a fresh interpreter loads for the clients and vre-job."""
    return loaded_modules(*ENTRY_POINTS)


@pytest.mark.parametrize("image", WORKLOAD_IMAGES)
def test_a_workload_image_copies_the_clients_and_no_server_code(
        image: str, workload_modules: set[str]) -> None:
    needed = {module_file(m).as_posix() for m in first_party(workload_modules)}
    code = {f for f in _copied_sources(image) if f.split("/")[0] in FIRST_PARTY}
    assert needed - code == set(), f"{image}: the clients import these, the image lacks them"
    # Beyond what the clients load, only batch_tools (what workloads run) is taken whole.
    extra = {f for f in code - needed if not f.startswith("batch_tools/")}
    assert extra == set(), f"{image}: copies server code a workload never imports"


def _requirement_names(requirements: list[str] | None) -> set[str]:
    names = set()
    for requirement in requirements or []:
        if "extra ==" not in requirement:
            names.add(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()
                      .replace("_", "-"))
    return names


@pytest.mark.parametrize("image", WORKLOAD_IMAGES)
def test_a_workload_image_installs_what_the_clients_import_and_no_server_library(
        image: str, workload_modules: set[str]) -> None:
    commands = [c.strip() for i in instructions(REPO / "images" / image / "Dockerfile")
                if i.keyword == "RUN" for c in i.args.split("&&")]
    installs = [shlex.split(c) for c in commands if re.search(r"\bpip install\b", c)]
    # The project itself without its dependencies (those of the servers).
    project = [words for words in installs if "." in words]
    assert project and all("--no-deps" in words for words in project), image
    named = {re.split(r"[<>=~!]", word)[0].lower() for words in installs for word in words
             if re.match(r"[A-Za-z0-9_.-]+[<>=~!]", word)}
    installed = set(named)
    pending = list(named)
    while pending:  # what pip brings with the named ones
        try:
            requires = metadata.requires(pending.pop())
        except metadata.PackageNotFoundError:
            continue
        for name in _requirement_names(requires) - installed:
            installed.add(name)
            pending.append(name)
    distributions = metadata.packages_distributions()
    bare = loaded_modules()  # the interpreter's own start (site hooks included)
    imported = {m.split(".")[0] for m in workload_modules - bare} - set(FIRST_PARTY)
    needed = {d.lower().replace("_", "-") for top in imported
              for d in distributions.get(top, [])}
    assert needed - installed == set(), f"{image}: the clients import these, not installed"
    # None asked for by name; what a named library brings along is its own affair (torch
    # needs jinja2 for its compiler, which is no server).
    assert server_libraries({n.replace("-", "_") for n in named}) == set(), image
