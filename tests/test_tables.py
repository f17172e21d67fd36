"""Tables as Markdown and HTML (flowood.tables) on hand cases: alignment, escaping, cells with classes, empty tables,
and the refusals."""

from __future__ import annotations

import pytest

from flowood.tables import Cell, Table


def test_markdown_aligns_the_first_column_left_and_numbers_right_by_default():
    t = Table(["set", "n", "AUROC"], [["mnist", "10", "0.500"], ["noise", "3", "1.000"]])
    assert t.markdown() == ("| set | n | AUROC |\n"
                            "|---|---:|---:|\n"
                            "| mnist | 10 | 0.500 |\n"
                            "| noise | 3 | 1.000 |")


def test_markdown_takes_each_columns_alignment():
    t = Table(["rank", "detector", "mean"], [["1", "knn", "0.9"]], align="rlc")
    assert t.markdown().splitlines()[1] == "|---:|---|:---:|"


def test_markdown_escapes_pipes_and_line_breaks_in_the_header_and_cells():
    t = Table(["a|b", "c"], [["x | y", "two\nlines"]])
    assert t.markdown() == "| a\\|b | c |\n|---|---:|\n| x \\| y | two lines |"


def test_html_escapes_every_text_and_keeps_markup_out():
    t = Table(["<set>", "n"], [["a & b", "<script>alert('x')</script>"]])
    assert t.html() == ("<table><tr><th>&lt;set&gt;</th><th>n</th></tr><tr><td>a &amp; b</td>"
                        "<td>&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</td></tr></table>")
    assert "|" in Table(["a|b"], []).html()  # a pipe is plain text in HTML


def test_html_marks_classes_and_the_alignment_that_differs_from_the_stylesheets():
    t = Table(["rank", "detector", "AUROC"], [["1", "knn", Cell("0.9", "best")], ["2", "msp", Cell("0.4", "bad")]],
              align="rlr")
    html = t.html()
    assert "<th style='text-align:right'>rank</th><th style='text-align:left'>detector</th><th>AUROC</th>" in html
    assert "<td class='best'>0.9</td>" in html and "<td class='bad'>0.4</td>" in html
    assert "<td style='text-align:left'>knn</td>" in html
    assert Table(["a"], [[Cell("x")]]).html() == "<table><tr><th>a</th></tr><tr><td>x</td></tr></table>"
    assert Table(["a"], [[Cell("x", "<b>")]]).html().count("&lt;b&gt;") == 1  # a class is escaped too


def test_a_cells_class_shows_only_in_html():
    assert Table(["a", "b"], [["x", Cell("0.9", "best")]]).markdown().splitlines()[2] == "| x | 0.9 |"


def test_an_empty_table_keeps_its_header():
    t = Table(["set", "AUROC"], [])
    assert t.markdown() == "| set | AUROC |\n|---|---:|"
    assert t.html() == "<table><tr><th>set</th><th>AUROC</th></tr></table>"


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="at least one column"):
        Table([], [])
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        Table(["a", "b"], [["1", "2"], ["3"]])
    with pytest.raises(ValueError, match="one of l, r, c for each of the 2 columns"):
        Table(["a", "b"], [], align="l")
    with pytest.raises(ValueError, match="one of l, r, c"):
        Table(["a", "b"], [], align="lx")
