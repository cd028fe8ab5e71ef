from __future__ import annotations

import csv

import pytest

from cli_helpers import one_line_error, runner
from liverscan.core.config import SourceSpec
from liverscan.core.errors import DataError
from liverscan.core.fileio import read_csv
from liverscan.core.sources import scan_sources
from liverscan.faces.cli import app


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('path,label\n"x,normal\n', "line 2: unterminated quote"),  # Python's csv module takes it as one field
        ('path,label\na.png,normal\n"b.png"x,normal\n', "line 3: ',' expected after '\"'"),
        ("path,label\na.png,normal\nb.png\n", "line 3: 1 field, the header has 2"),
        ("path,label\na.png,normal,extra\n", "line 2: 3 fields, the header has 2"),
    ],
)
def test_a_malformed_csv_source_is_a_one_line_error_naming_it(tmp_path, text, reason):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(csv.Error, match=reason):
        read_csv(bad)
    with pytest.raises(DataError, match=f"bad.csv: malformed CSV file \\({reason}\\)"):
        scan_sources([SourceSpec(str(bad))])
    out = tmp_path / "p"
    one_line_error(
        runner.invoke(app, ["prepare", str(bad), "--out", str(out)]), f"bad.csv: malformed CSV file ({reason})"
    )
    assert not out.exists()


def test_blank_lines_and_a_missing_final_newline_are_not_malformed(tmp_path):
    ok = tmp_path / "ok.csv"
    ok.write_text('path,label\na.png,normal\n\n"b,1.png",tumor')
    assert read_csv(ok) == [{"path": "a.png", "label": "normal"}, {"path": "b,1.png", "label": "tumor"}]
