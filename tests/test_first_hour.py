"""What a new user meets in the first hour: the README's commands and links, what its install
commands install, the results table's labels and the benchmark commands' help."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import evaluate
import get_flow
import train
from benchmarks import learning
from core import weights

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The README's commands whose options are checked, by how they start.
PARSERS = {
    "python train.py": train.get_args_parser,
    "python evaluate.py": evaluate.get_args_parser,
    "python get_flow.py": get_flow.get_args_parser,
    "python -m core.weights": weights.get_args_parser,
}


def readme_commands() -> list[str]:
    """The lines of the README's bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_commands_parse():
    """Every train.py / evaluate.py / get_flow.py / core.weights command of the README, the seed
    commands included, has only options that its script knows (argparse exits 2 otherwise)."""
    checked = 0
    for command in readme_commands():
        start = next((s for s in PARSERS if command.startswith(s + " ") or command == s), None)
        if start is not None:
            parser = PARSERS[start]()
            parser.parse_args(shlex.split(command)[len(start.split()) :])
            checked += 1
    seed = [c for c in readme_commands() if c.startswith("python train.py --name decflow")]
    assert checked >= 15 and len(seed) == 2 and all("--num_steps 10000" in c for c in seed)


def test_the_readme_links_and_size():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs|datasets|assets)/[^)#]+)", text)
    assert {"docs/benchmarks.md", "docs/learning-check.md", "docs/differences.md"} <= set(links)
    assert all((REPO / link).is_file() for link in links), [link for link in links if not (REPO / link).is_file()]
    assert len(text.splitlines()) <= 300  # for users; history and benchmark tables live in docs/


def test_ffn_protocol_row_has_its_own_labels(synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    """Its values (whole-image sums and counts over mask pixels) can exceed 1: they must not sit
    under the <1px/<3px/<5px accuracy columns."""
    evaluate.main(
        evaluate.get_args_parser().parse_args(
            ["--method", "zero", "--root", str(synthetic_root), "--max_pairs", "1", "--no_progress"]
        )
    )
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("ffn_protocol*"))
    accuracy_header = next(i for i, line in enumerate(lines) if "<1px" in line)
    assert accuracy_header < row - 1 and lines[accuracy_header + 1].startswith("facial")
    assert lines[row - 1].split()[:2] == ["EPE", "sum"] and "<1px" not in lines[row - 1]
    assert "1px cnt" in lines[row - 1] and "/ mask pixels" in lines[row - 1]
    assert any("not accuracies" in line for line in lines[row:])


@pytest.mark.parametrize(
    "module, shown",
    [
        (
            "benchmarks.learning",
            ["--steps STEPS", f"(default: {learning.get_args_parser().get_default('steps')})", "this machine's"],
        ),
        ("benchmarks.benchmark", ["6 with --device cuda", "1920x1080", "(default 3)"]),
    ],
)
def test_benchmark_help_shows_python_m_usage_and_defaults(module: str, shown: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module} ")
    text = " ".join(proc.stdout.split())  # help lines are wrapped
    for part in shown:
        assert part in text, part


# pip's options that take a value that is not a requirement (`pip install --index-url URL torch`).
PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint"}
PIP_REQUIREMENT_FILE_OPTIONS = {"-r", "--requirement"}
# Top-level names that are this repository's own: the scripts at its root and its folders of modules.
LOCAL_MODULES = {path.stem for path in REPO.glob("*.py")} | {path.parent.name for path in REPO.glob("*/*.py")}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def index_of_test_command(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if "pytest" in shlex.split(line)[:3])


def pip_installs(lines: list[str]) -> tuple[list[str], set[str]]:
    """The requirement files (`-r`) and the distributions named by the pip commands among `lines`."""
    files, names = [], set()
    for words in map(shlex.split, lines):
        if "pip" not in words[:3] or "install" not in words:
            continue
        arguments = iter(words[words.index("install") + 1 :])
        for word in arguments:
            if word in PIP_REQUIREMENT_FILE_OPTIONS:
                files.append(next(arguments))
            elif word in PIP_VALUE_OPTIONS:
                next(arguments)
            elif not word.startswith("-"):
                names.add(canonicalize_name(Requirement(word).name))
    return files, names


def installed_by(lines: list[str]) -> set[str]:
    """The distributions that the pip commands among `lines` install: those they name and those of the
    requirement files they name (with these files' own `-r` lines); their dependencies left out."""
    files, names = pip_installs(lines)
    return names.union(*(requirement_file_names(REPO / file) for file in files))


def readme_install_requirements() -> set[str]:
    lines = readme_commands()
    return installed_by(lines[: index_of_test_command(lines)])


def requirement_file_names(path: Path) -> set[str]:
    names: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            names |= requirement_file_names(path.parent / line.split()[1])
        elif line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def with_dependencies(names: set[str]) -> set[str]:
    """`names` and, for those installed here, what they require (markers evaluated, extras left out)."""
    todo, found = list(names), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in map(Requirement, requires):
            if spec.marker is None or spec.marker.evaluate({"extra": ""}):
                todo.append(spec.name)
    return found


def catches_import_error(node: ast.Try) -> bool:
    names = [handler.type for handler in node.handlers if handler.type is not None]
    flat = [n for name in names for n in (name.elts if isinstance(name, ast.Tuple) else [name])]
    return any(isinstance(n, ast.Name) and n.id in IMPORT_ERRORS for n in flat)


def required_imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(dotted module, line) of each absolute import that is not inside a `try` that catches ImportError."""
    optional = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.Try) and catches_import_error(node)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            yield from ((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)


def skipped_modules(tree: ast.AST) -> set[str]:
    """The modules that the file's `pytest.importorskip("name")` calls skip its tests without."""
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    return {
        call.args[0].value.split(".")[0]
        for call in calls
        if call.func.attr == "importorskip" and call.args and isinstance(call.args[0], ast.Constant)
    }


def local_file(module: str) -> Path | None:
    parts = module.split(".")
    for path in (REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


def third_party_imports_of_test(test_file: Path) -> dict[str, str]:
    """{top-level module: "file:line"} that `test_file` and the project modules it imports (all the
    way down) import, less those that the test file skips without."""
    todo, seen, found = [test_file], set(), {}
    skipped = skipped_modules(ast.parse(test_file.read_text(encoding="utf-8")))
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module, line in required_imports(ast.parse(path.read_text(encoding="utf-8"))):
            top = module.split(".")[0]
            if top in LOCAL_MODULES:
                # `a.b.c` runs a/__init__.py, a/b/__init__.py and a/b/c.py (those that exist)
                parts = module.split(".")
                todo += [p for i in range(1, len(parts) + 1) if (p := local_file(".".join(parts[:i]))) is not None]
            elif top not in sys.stdlib_module_names and top not in skipped and top != "__future__":
                found.setdefault(top, f"{path.relative_to(REPO)}:{line}")
    return found


def test_the_readme_installs_what_the_tests_import():
    """A user who runs the README's install commands and then its pytest command gets every
    third-party module the tests import (or the tests that need it skip, saying why): the
    README's pip commands, the requirement files they name and those files' own dependencies."""
    installed = with_dependencies(readme_install_requirements())
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for test_file in sorted((REPO / "tests").rglob("*.py")):
        for module, where in third_party_imports_of_test(test_file).items():
            provided_by = {canonicalize_name(name) for name in distributions.get(module, [])}
            if not provided_by & installed:
                missing[module] = f"{where} (from {sorted(provided_by) or 'no installed distribution'})"
    assert not missing, f"the README's install commands do not install: {missing}"


def test_ci_installs_what_the_readme_installs_and_runs_its_test_command():
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    ci = [line for line in ci if line and not line.startswith("#")]
    readme = readme_commands()
    test_command = readme[index_of_test_command(readme)]
    assert test_command in ci, f"CI does not run the README's {test_command!r}"
    ci_installs = installed_by(ci[: ci.index(test_command)])
    assert readme_install_requirements() <= ci_installs, readme_install_requirements() - ci_installs


# (module with get_args_parser, optional package it needs, arguments, a long option with its value):
# the arguments with the option parse, and the option cut by one letter is refused.
ABBREVIATED = [
    ("train", None, [], ["--num_steps", "2"]),
    ("evaluate", None, [], ["--iters", "4"]),
    ("get_flow", None, [], ["--iters", "4"]),
    ("core.weights", None, ["fetch", "gma-sintel"], ["--force"]),
    ("core.weights", None, ["list"], ["--folder", "x"]),
    ("core.synthetic.cli", None, ["--root", "x"], ["--subjects", "1"]),
    ("core.export", "onnx", ["--iters", "4", "--output", "x.onnx"], ["--size", "128", "128"]),
    ("benchmarks.benchmark", None, ["inference"], ["--iters", "4"]),
    ("benchmarks.corpus", None, [], ["--iters", "4"]),
    ("benchmarks.cuda_check", None, [], ["--budget", "10"]),
    ("benchmarks.export", "onnxruntime", [], ["--iters", "4"]),
    ("benchmarks.face_detection", None, [], ["--repeats", "1"]),
    ("benchmarks.learning", None, [], ["--steps", "4"]),
    ("benchmarks.levers", None, [], ["--iters", "4"]),
    ("benchmarks.op_count", None, [], ["--iters", "4"]),
]


@pytest.mark.parametrize("module, needs, arguments, option", ABBREVIATED, ids=[case[0] for case in ABBREVIATED])
def test_parsers_refuse_abbreviated_options(
    module: str, needs: str | None, arguments: list[str], option: list[str], capsys: pytest.CaptureFixture
) -> None:
    """`--num_step 2` ran as `--num_steps 2`, `--iter` as `--iters`: a mistyped option must stop the run."""
    if needs is not None:
        pytest.importorskip(needs, reason=f"{module} needs {needs} (pip install -r requirements-export.txt)")
    get_args_parser = importlib.import_module(module).get_args_parser
    get_args_parser().parse_args([*arguments, *option])
    abbreviation = option[0][:-1]
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args([*arguments, abbreviation, *option[1:]])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {abbreviation}" in capsys.readouterr().err


def test_every_parser_in_the_repository_refuses_abbreviations():
    """Each `ArgumentParser(...)` and subcommand `add_parser(...)` call says `allow_abbrev=False`
    (a subcommand's parser does not inherit it), so that a parser added later is covered too."""
    calls = []
    for path in REPO.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None)
            name = getattr(func, "attr", None) or getattr(func, "id", None)  # argparse.X(...) or X(...)
            if isinstance(node, ast.Call) and name in ("ArgumentParser", "OneLineErrorParser", "add_parser"):
                keywords = {k.arg: k.value for k in node.keywords}
                refuses = isinstance(keywords.get("allow_abbrev"), ast.Constant) and not keywords["allow_abbrev"].value
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", refuses))
    assert len(calls) >= 16 and all(refuses for _, refuses in calls), [where for where, ok in calls if not ok]
