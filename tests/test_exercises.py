"""Tutorial exercises: every `check` cell fails on the student version and follows a solution.

A cell tagged ``solution`` holds its answer between the lines ``# BEGIN SOLUTION`` and
``# END SOLUTION``; the student version deletes those lines and what lies between. A cell tagged
``check`` asserts the answer. With the solutions in place nbmake runs every check; here the
student version runs (small mode, up to its last check) and every check must raise an
AssertionError: a NameError or TypeError would mean the student sees a crash, not a hint, and a
check that passes without the solution checks nothing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted(ROOT.glob("tutorials/*.ipynb"))
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"


def tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def cells_tagged(nb: dict, tag: str) -> list[int]:
    """Indices of the cells tagged ``tag``, in order."""
    return [i for i, cell in enumerate(nb["cells"]) if tag in tags(cell)]


def source_text(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def strip_solution(source: str, where: str = "a solution cell") -> str:
    """``source`` without its ``BEGIN``..``END`` blocks (marker lines included).

    Raises ValueError when there is no block, or markers are nested or unbalanced.
    """
    kept: list[str] = []
    inside = False
    blocks = 0
    for line in source.splitlines(keepends=True):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}: {BEGIN!r} inside another block; close it with {END!r}")
            inside = True
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}: {END!r} without a {BEGIN!r} above it")
            inside, blocks = False, blocks + 1
        elif not inside:
            kept.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} is never closed; add a line {END!r}")
    if blocks == 0:
        raise ValueError(
            f"{where} has no {BEGIN!r} ... {END!r} block: put the answer between those lines"
        )
    return "".join(kept)


def student_version(nb: dict) -> dict:
    """A copy of notebook ``nb`` (nbformat JSON as a dict) with every solution block deleted."""
    out = copy.deepcopy(nb)
    for i in cells_tagged(out, "solution"):
        cell = out["cells"][i]
        if cell["cell_type"] != "code":
            raise ValueError(f"cell {i} is tagged solution but is {cell['cell_type']}, not code")
        cell["source"] = strip_solution(source_text(cell), f"solution cell {i}")
    return out


def check_exercise_layout(nb: dict) -> None:
    """Solutions and checks come together, and each check has a solution somewhere above it."""
    solutions, checks = cells_tagged(nb, "solution"), cells_tagged(nb, "check")
    if solutions and not checks:
        raise AssertionError(f"solution cells {solutions} but no cell tagged check")
    if checks and not solutions:
        raise AssertionError(f"check cells {checks} but no cell tagged solution")
    for i in checks:
        assert any(s < i for s in solutions), f"check cell {i} has no solution cell above it"
        assert "solution" not in tags(nb["cells"][i]), f"cell {i} is tagged both solution and check"


def run_student(nb: dict, cwd: Path, timeout: int = 1800) -> list[tuple[int, str, str]]:
    """Run the student version of ``nb`` up to its last check, past errors.

    Returns ``[(cell index, exception name, message)]`` for every cell that raised.
    """
    import nbformat
    from nbclient import NotebookClient

    student = student_version(nb)
    last = cells_tagged(student, "check")[-1]
    student["cells"] = student["cells"][: last + 1]
    node = nbformat.reads(json.dumps(student), as_version=4)  # sources as strings
    client = NotebookClient(
        node,
        timeout=timeout,
        allow_errors=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    errors = []
    for i, cell in enumerate(node.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append((i, output["ename"], output["evalue"]))
    return errors


def exercise_failures(nb: dict, errors: list[tuple[int, str, str]]) -> list[str]:
    """What is wrong with a student run's ``errors`` (empty when every check failed properly)."""
    by_cell = {i: (name, message) for i, name, message in errors}
    problems = []
    for i in cells_tagged(nb, "check"):
        name, message = by_cell.get(i, (None, ""))
        if name is None:
            problems.append(f"check cell {i} passed without the solution")
        elif name != "AssertionError":
            problems.append(f"check cell {i} raised {name}: {message} (want an AssertionError)")
    for i, (name, message) in sorted(by_cell.items()):
        if not tags(nb["cells"][i]) & {"solution", "check"}:
            problems.append(f"untagged cell {i} raised {name}: {message}")
    return problems


# The transformation and the verdict, on small synthetic notebooks (no model).


def synthetic(cells: list[tuple[str, str | None]]) -> dict:
    """A notebook of code cells ``(source, tag or None)``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    for source, tag in cells:
        cell = nbformat.v4.new_code_cell(source)
        if tag:
            cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    return json.loads(nbformat.writes(nb))


def test_student_version_deletes_marked_lines_and_keeps_the_rest():
    nb = synthetic(
        [
            ("x = 1", None),
            (f"answer = None\n{BEGIN}\nanswer = x + 1\n{END}\nprint(answer)", "solution"),
            ("assert answer == 2", "check"),
        ]
    )
    student = student_version(nb)
    assert source_text(student["cells"][1]) == "answer = None\nprint(answer)"
    assert [source_text(c) for c in student["cells"][::2]] == ["x = 1", "assert answer == 2"]
    assert source_text(nb["cells"][1]).count("answer = x + 1") == 1  # the original is untouched


def test_every_block_of_a_cell_goes_and_indented_markers_count():
    source = f"a = 0\n{BEGIN}\na = 1\n{END}\nb = 0\nif True:\n    {BEGIN}\n    b = 2\n    {END}\n"
    assert strip_solution(source) == "a = 0\nb = 0\nif True:\n"


@pytest.mark.parametrize(
    "source, complaint",
    [
        ("answer = 2", "has no"),
        (f"{BEGIN}\nanswer = 2", "never closed"),
        (f"answer = 2\n{END}", "without"),
        (f"{BEGIN}\n{BEGIN}\n{END}\n{END}", "inside another"),
    ],
)
def test_bad_markers_are_errors(source, complaint):
    nb = synthetic([(source, "solution"), ("assert answer == 2", "check")])
    with pytest.raises(ValueError, match=complaint):
        student_version(nb)


def test_layout_needs_a_solution_above_each_check():
    assert check_exercise_layout(synthetic([("x = 1", None)])) is None  # no exercises: fine
    ok = synthetic([(f"{BEGIN}\na = 1\n{END}", "solution"), ("assert a == 1", "check")])
    assert check_exercise_layout(ok) is None
    for cells in (
        [("assert a == 1", "check"), (f"{BEGIN}\na = 1\n{END}", "solution")],
        [(f"{BEGIN}\na = 1\n{END}", "solution")],
        [("assert a == 1", "check")],
    ):
        with pytest.raises(AssertionError):
            check_exercise_layout(synthetic(cells))


def test_student_run_accepts_assertion_errors_and_flags_the_rest(tmp_path):
    nb = synthetic(
        [
            ("x = 1", None),
            (f"a = None\n{BEGIN}\na = x\n{END}", "solution"),
            ("assert a == 1, 'not yet'", "check"),  # fails properly
            (f"{BEGIN}\nb = 2\n{END}", "solution"),
            ("assert b == 2", "check"),  # NameError: the placeholder is missing
            ("y = undefined_name", None),  # an untagged cell that breaks
            (f"c = None\n{BEGIN}\nc = 3\n{END}", "solution"),
            ("assert c is None or c == 3", "check"),  # passes without the solution
            ("raise RuntimeError('after the last check: never run')", None),
        ]
    )
    errors = run_student(nb, tmp_path, timeout=60)
    assert [(i, name) for i, name, _ in errors] == [
        (2, "AssertionError"),
        (4, "NameError"),
        (5, "NameError"),
    ]
    problems = exercise_failures(nb, errors)
    assert len(problems) == 3
    assert "check cell 4 raised NameError" in problems[0]
    assert "check cell 7 passed" in problems[1]
    assert "untagged cell 5 raised NameError" in problems[2]


# The tutorials.


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_checks_come_with_solutions(path):
    nb = load(path)
    check_exercise_layout(nb)
    student_version(nb)  # every solution cell has well-formed markers


WITH_EXERCISES = [p for p in TUTORIALS if cells_tagged(load(p), "solution")]


@pytest.mark.embedded
@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_student_version_fails_every_check_with_an_assertion(path, monkeypatch):
    monkeypatch.setenv("GSNB_SMALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = load(path)
    problems = exercise_failures(nb, run_student(nb, path.parent))
    assert not problems, f"{path.name} (student version, small mode):\n" + "\n".join(problems)
