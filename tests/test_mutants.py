"""``tests/mutants.py`` stays runnable: each bug's text is found once in its file, the bug is valid
Python, and the test that must catch it exists; so code that moves shows here, not on the day
someone runs the mutants."""

from mutants import MUTANTS, ROOT


def test_every_mutant_applies_and_names_a_test_that_exists():
    assert sorted(m.row for m in MUTANTS) == list(range(1, len(MUTANTS) + 1))
    for mutant in MUTANTS:
        text = (ROOT / mutant.file).read_text()
        for old, new in mutant.edits:
            assert text.count(old) == 1, f"row {mutant.row}: {old!r} is not found once in {mutant.file}"
            text = text.replace(old, new)
        compile(text, mutant.file, "exec")
        module, name = mutant.test.split("::")
        assert f"\ndef {name}(" in (ROOT / "tests" / module).read_text(), f"row {mutant.row}: no test {mutant.test}"
