"""rl/ stays readable: no function or method in vla_robot/rl/ is longer than a reader can hold in their head.

Issue 15 asks that rl/demo.py, rl/episodes.py and the learner each read in one sitting, and that no
function over 80 lines remains in rl/. This keeps it true: a function that grows past the limit
fails here by name, and gets split where its parts have names of their own.
"""
import ast
from pathlib import Path

import vla_robot.rl

MAX_LINES = 80
RL_DIR = Path(vla_robot.rl.__file__).parent


def long_functions(path: Path, max_lines: int = MAX_LINES) -> list[str]:
    """'file:line name (N lines)' for each function or method in ``path`` longer than ``max_lines``
    (decorators not counted: from ``def`` to the last line of the body)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > max_lines:
                out.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_in_rl_is_over_80_lines():
    files = sorted(RL_DIR.glob("*.py"))
    assert files, f"no Python files found in {RL_DIR}"
    too_long = [f for path in files for f in long_functions(path)]
    assert not too_long, (f"functions in vla_robot/rl/ over {MAX_LINES} lines (split them into named parts): "
                          + "; ".join(too_long))


def test_the_check_names_a_long_function_and_passes_a_short_one(tmp_path):
    src = tmp_path / "sample.py"
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))  # def line + 80 body lines = 81
    src.write_text(f"def short():\n    return 1\n\n\nclass C:\n    def long(self):\n{body}\n")
    assert long_functions(src) == [f"sample.py:6 long ({MAX_LINES + 1} lines)"]
    src.write_text("def fits():\n" + "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES - 1)) + "\n")
    assert long_functions(src) == []
