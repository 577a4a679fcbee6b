"""--prompts CSV files: real CSV (quoted fields may hold commas, quotes and line breaks)."""

import pytest

from diffcls_fast import UserError
from diffcls_fast.engine.prompts import read_prompts_csv


def test_a_quoted_prompt_keeps_its_line_break_and_later_line_numbers_stay_right(tmp_path):
    # Regression: the file was split with str.splitlines() before csv saw it, so a quoted multi-line
    # prompt lost its line break and two words merged ("digit\nseven" became "digitseven").
    p = tmp_path / "p.csv"
    p.write_text(
        'classidx,prompt,classname\n0,"a handwritten digit\nseven",seven\n1,"three, ""quoted""",three\n2,,two\n'
    )
    with pytest.raises(UserError, match=r"p\.csv:5: empty prompt"):  # the record on line 5: the quoted break counts
        read_prompts_csv(p)
    p.write_text('classidx,prompt,classname\n0,"a handwritten digit\nseven",seven\n1,"three, ""quoted""",three\n')
    spec = read_prompts_csv(p)
    assert spec.names == ["seven", "three"] and spec.prompts == ["a handwritten digit\nseven", 'three, "quoted"']


def test_a_line_separator_inside_a_prompt_is_not_a_row_break(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("classidx,prompt,classname\n0,a digit\u2028seven,seven\n1,a digit three,three\n", encoding="utf-8")
    assert read_prompts_csv(p).prompts == ["a digit\u2028seven", "a digit three"]
