"""The comment within GitHub's limit: the longest table loses rows from its end and says so."""

from __future__ import annotations

from pipeline.review.compare import fit, tables

ADVICE = "`maestro-xl compare main` prints them all"


def table(name: str, rows: int, width: int = 40) -> list[str]:
    return [f"| {name} | value |", "| --- | --- |", *(f"| {name}-{i:04d} | {'x' * width} |" for i in range(rows))]


def test_a_comment_within_the_limit_is_left_as_it_is():
    text = "\n".join(["# title", "", *table("small", 3), "", "end"])
    assert fit(text, 10_000, ADVICE) == text


def test_the_longest_table_loses_its_last_rows_and_says_how_many():
    small, big = table("small", 5), table("big", 2000)
    text = "\n".join(["# title", "", *small, "", "## big", "", *big, "", "end"])
    fitted = fit(text, 20_000, ADVICE)
    assert len(text) > 20_000 >= len(fitted) > 18_000  # no more rows dropped than needed (each row ~57 characters)
    lines = fitted.split("\n")
    assert lines[: 2 + len(small)] == ["# title", "", *small]  # the small table whole
    (_, (start, end)) = tables(lines)
    kept = lines[start:end]
    assert kept == big[: len(kept)] and len(kept) < len(big)  # the first rows, in order
    dropped = len(big) - len(kept)
    assert lines[end] == "" and lines[end + 1] == (
        f"_{dropped} of this table's 2000 rows are left out, to stay within GitHub's 20,000-character limit: {ADVICE}._"
    )  # a blank line first, or GitHub would read the note as a row of the table
    assert lines[-1] == "end"


def test_the_rows_go_from_the_longest_table_first():
    a, b = table("a", 300, width=10), table("b", 300, width=100)
    text = "\n".join([*a, "", *b])
    fitted = fit(text, len(text) - 5_000, ADVICE)
    assert "\n".join(a) in fitted and "of this table's 300 rows" in fitted
    assert fitted.count("rows are left out") == 1


def test_text_over_the_limit_without_tables_is_cut_with_a_note():
    fitted = fit("word " * 5_000, 1_000, ADVICE)
    assert len(fitted) <= 1_000 and fitted.endswith(f"_Cut here, at GitHub's 1,000-character limit: {ADVICE}._")
