"""The README's two set-up commands, and CI running exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = text.split("```bash")[1:]
    return [b.split("```")[0].strip() for b in blocks]


def test_readme_opens_with_two_setup_commands():
    cmds = _commands()
    assert len(cmds) >= 2
    assert all(c.count("\n") == 0 for c in cmds[:2])
    assert "torch==2.13.0" in cmds[0] and "torch==2.13.0" in cmds[1]
    assert "sample_data" in cmds[0] and "medhdiff" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    test_cmd = _commands()[1].split("pip install torch==2.13.0 && ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd in ci, (test_cmd, ci)


def test_readme_sample_files_exist():
    for token in _commands()[0].split():
        if token.startswith("sample_data/"):
            assert (ROOT / token).exists(), token
