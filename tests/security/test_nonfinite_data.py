"""Whoever hands you a data file can slip in one ``nan`` or ``inf``: after standardization
(mean and std over every row) that one cell turns its whole feature into NaN, and every
model trained on it. Such files are refused at load, saying where the bad cell is."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data import DATASETS
from fedpriv.errors import DataError

ROWS = [f"{i % 3},{i * 0.5},{(-1) ** i * i},{i % 2}" for i in range(20)]


def write_csv(path, rows: list[str], header: str = "a,b,c,label") -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def load_csv(path: str):
    return DATASETS.create({"name": "csv", "path": path}).load(seed=0)


@pytest.mark.parametrize("cell", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_a_csv_with_one_non_finite_cell_is_refused_with_file_row_and_column(tmp_path, cell):
    """Before the fix, the file loaded and column b was NaN in every row of x_train."""
    rows = list(ROWS)
    rows[6] = rows[6].replace(",3.0,", f",{cell},")  # data row 7: line 8, after the header
    path = write_csv(tmp_path / "poisoned.csv", rows)
    with pytest.raises(DataError) as error:
        load_csv(path)
    message = str(error.value)
    assert "poisoned.csv" in message and "row 8" in message and "column 'b'" in message
    assert "finite" in message


def test_row_numbers_count_lines_as_a_spreadsheet_does(tmp_path):
    """Blank and comment lines, which the CSV reader skips, still count as rows."""
    rows = [ROWS[0], "", "# a comment", ROWS[1], ROWS[3].replace("-3", "inf")]
    with pytest.raises(DataError, match=r"row 6, column 'c'"):
        load_csv(write_csv(tmp_path / "gaps.csv", rows))


def test_a_non_finite_label_is_refused_too(tmp_path):
    rows = list(ROWS)
    rows[0] = "0,0.0,0,nan"
    with pytest.raises(DataError, match=r"row 2, column 'label'"):
        load_csv(write_csv(tmp_path / "label.csv", rows))


def test_every_bad_cell_is_counted(tmp_path):
    rows = [r.replace(",", ",nan,", 1) if i % 5 == 0 else r.replace(",", ",1,", 1)
            for i, r in enumerate(ROWS)]  # fmt: skip
    with pytest.raises(DataError, match=r"row 2, column 'b'.*3 more cells"):
        load_csv(write_csv(tmp_path / "many.csv", rows, header="a,b,c,d,label"))


SPLIT = ("x_train", "y_train", "x_test", "y_test")


@pytest.mark.parametrize(
    ("names", "poisoned", "value", "index"),
    [
        (("x", "y"), "x", np.nan, (3, 1)),
        (SPLIT, "x_train", np.inf, (0, 2)),
        (SPLIT, "x_test", -np.inf, (1, 0)),
    ],
)
def test_an_npz_with_a_non_finite_value_is_refused_with_array_and_index(
    tmp_path, names, poisoned, value, index
):
    """Before the fix, each of these loaded and handed NaN or Inf to the model."""
    rng = np.random.default_rng(0)
    saved = {}
    for name in names:
        if name.startswith("y"):
            saved[name] = rng.integers(0, 2, 10)
        else:
            saved[name] = rng.normal(size=(10, 3)).astype(np.float32)
    saved[poisoned][index] = value
    np.savez(tmp_path / "poisoned.npz", **saved)
    where = rf"poisoned.npz.*array '{poisoned}'.*index \({index[0]}, {index[1]}\).*finite"
    with pytest.raises(DataError, match=where):
        DATASETS.create({"name": "npz", "path": str(tmp_path / "poisoned.npz")}).load(seed=0)


def test_finite_files_still_load(tmp_path):
    data = load_csv(write_csv(tmp_path / "fine.csv", ROWS))
    assert np.isfinite(data.x_train).all() and data.input_shape == (3,)
