"""Tables: reading, schema inference and its YAML, the bad inputs of issue 15, and every transform's round trip."""

from __future__ import annotations

import re

import numpy as np
import pytest

from genforge.data.table import (TableTransformer, load_table, read_raw, read_schema, write_schema)
from genforge.data.table.conditions import check_rows_fit, parse_conditions
from genforge.data.table.schema import apply_schema, infer_schema
from genforge.data.table.transforms import to_text_columns
from genforge.errors import DataError


def write(tmp_path, text: str, name: str = "t.csv") -> str:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def patients(n: int = 60, seed: int = 0, missing: bool = True) -> str:
    """A small patient table: numbers with decimals, whole numbers, categories, a flag, dates, missing cells."""
    rng = np.random.default_rng(seed)
    lines = ["pid,age,weight,sex,smoker,visit,cd4"]
    for i in range(n):
        cd4 = "" if missing and i % 7 == 3 else str(int(rng.integers(50, 900)))
        lines.append(f"{1000 + i},{int(rng.integers(18, 90))},{rng.normal(70, 12):.1f},{'FM'[i % 2]},"
                     f"{'yes' if i % 3 else 'no'},2021-{1 + i % 12:02d}-{1 + i % 28:02d},{cd4}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- inference and the YAML

def test_inferred_schema_names_each_kind_and_round_trips_through_its_yaml(tmp_path):
    path = write(tmp_path, patients())
    splits = load_table(f"csv:{path}")
    kinds = {c.name: c.kind for c in splits.schema.columns}
    assert kinds == {"pid": "id", "age": "integer", "weight": "continuous", "sex": "categorical",
                     "smoker": "boolean", "visit": "datetime", "cd4": "integer"}
    assert splits.schema.column("cd4").missing == pytest.approx(9 / 60)
    assert any("'pid'" in n and "ID" in n for n in splits.notes)
    yaml_path = write_schema(splits.schema, tmp_path / "schema.yaml")
    text = yaml_path.read_text()
    assert "weight: {kind: continuous" in text and "missing" in text
    # the user edits it: sex becomes a fixed set with a third category, age gets a wider range
    text = text.replace("categories: [F, M]", "categories: [F, M, X]")
    text = re.sub(r"(age: \{kind: integer, )max: ([\d.]+), min: [\d.]+", r"\1max: \2, min: 0", text)
    yaml_path.write_text(text)
    again = load_table(f"csv:{path}", schema=yaml_path)
    assert again.schema.column("sex").categories == ["F", "M", "X"]
    assert again.schema.column("age").min == 0
    assert len(again.train) + len(again.val) + len(again.test) == 60


def test_parquet_reads_like_the_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"age": [30, 41, 52, 63, 35, 47], "sex": ["F", "M", "F", "M", "F", "M"],
                      "bmi": [21.5, 30.25, None, 27.0, 22.1, 25.5]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    raw = read_raw(f"parquet:{path}")
    assert raw.columns == ["age", "sex", "bmi"]
    assert list(raw.cells["bmi"]) == ["21.5", "30.25", None, "27.0", "22.1", "25.5"]


# ----------------------------------------------------------------------------------- bad input, one test each

def test_ragged_row_is_one_line_naming_the_line(tmp_path):
    path = write(tmp_path, "a,b,c\n1,2,3\n4,5\n6,7,8\n")
    with pytest.raises(DataError, match=r"t\.csv line 3: 2 fields where the header has 3"):
        read_raw(f"csv:{path}")


def test_undecodable_byte_names_the_line_and_byte(tmp_path):
    path = write(tmp_path, b"a,b\n1,x\n2,caf\xe9\n")
    with pytest.raises(DataError, match=r"line 3: byte 0xe9 is not UTF-8"):
        read_raw(f"csv:{path}")


def test_numeric_column_with_some_strings_reads_them_as_missing_with_a_note(tmp_path):
    rows = ["x,y"] + [f"{i}.5,{'unknown' if i == 4 else i * 2.5}" for i in range(40)]
    path = write(tmp_path, "\n".join(rows) + "\n")
    splits = load_table(f"csv:{path}", val_fraction=0.0, test_fraction=0.0)
    assert splits.schema.column("y").kind == "continuous"
    assert any("'y'" in n and "'unknown'" in n and "missing" in n for n in splits.notes)
    assert np.isnan(splits.train.values["y"]).sum() == 1


def test_all_missing_column_is_dropped_with_a_note(tmp_path):
    rows = ["a,empty,b"] + [f"{i}.1,,{'xy'[i % 2]}" for i in range(20)]
    splits = load_table(f"csv:{write(tmp_path, chr(10).join(rows))}")
    assert splits.schema.column("empty").kind == "drop"
    assert "empty" not in splits.train.values
    assert any("'empty': all 20 values missing: dropped" in n for n in splits.notes)


def test_constant_column_is_written_into_every_generated_row(tmp_path):
    rows = ["a,site"] + [f"{i}.3,Berlin" for i in range(20)]
    splits = load_table(f"csv:{write(tmp_path, chr(10).join(rows))}")
    assert splits.schema.column("site").kind == "constant"
    assert any("'site': constant" in n for n in splits.notes)
    tf = TableTransformer.fit(splits.train)
    out = to_text_columns(tf.decode(tf.encode(splits.train)))
    assert set(out["site"]) == {"Berlin"}


def test_category_with_one_value_per_row_is_an_id_dropped_with_a_note(tmp_path):
    rows = ["name,age"] + [f"patient-{i},{20 + (i * 7) % 13}.5" for i in range(30)]
    splits = load_table(f"csv:{write(tmp_path, chr(10).join(rows))}")
    assert splits.schema.column("name").kind == "id"
    assert any("'name': a different value in every row (an ID): dropped" in n for n in splits.notes)


def test_dates_in_two_formats_are_refused_naming_both(tmp_path):
    rows = ["visit,a"] + [f"2021-03-{1 + i:02d},{i}.5" for i in range(10)] + ["15/03/2021,1.5"]
    with pytest.raises(DataError, match=r"column 'visit' holds dates in more than one format \('15/03/2021', '2021-03-01'\)"):
        load_table(f"csv:{write(tmp_path, chr(10).join(rows))}")


def test_schema_naming_a_column_the_csv_lacks_is_refused(tmp_path):
    path = write(tmp_path, patients())
    schema = tmp_path / "schema.yaml"
    schema.write_text("columns:\n  age: {kind: integer}\n  height: {kind: continuous}\n")
    with pytest.raises(DataError, match=r"schema.yaml: column 'height' is not in .*t\.csv \(its columns: pid, age"):
        load_table(f"csv:{path}", schema=schema)


def test_schema_with_an_unknown_field_or_kind_is_refused(tmp_path):
    raw = read_raw(f"csv:{write(tmp_path, patients())}")
    bad = tmp_path / "s.yaml"
    bad.write_text("columns:\n  age: {kind: number}\n")
    with pytest.raises(DataError, match="column 'age': kind must be one of continuous"):
        read_schema(bad, raw)
    bad.write_text("columns:\n  age: {kind: integer, decimals: 2}\n")
    with pytest.raises(DataError, match=r"column 'age' \(integer\) has no field 'decimals'"):
        read_schema(bad, raw)


def test_value_outside_the_schemas_range_is_refused_naming_the_row(tmp_path):
    path = write(tmp_path, patients())
    schema = tmp_path / "schema.yaml"
    schema.write_text("columns:\n  age: {kind: integer, min: 0, max: 20}\n")
    with pytest.raises(DataError, match=r"column 'age' row \d+: '\d+' is outside the schema's max 20"):
        load_table(f"csv:{path}", schema=schema)


def test_condition_on_a_category_the_model_never_saw_is_refused(tmp_path):
    splits = load_table(f"csv:{write(tmp_path, patients())}")
    with pytest.raises(DataError, match=r"'X' is not a category the model saw in column 'sex' \(F, M\)"):
        parse_conditions(["sex=X"], splits.schema)
    with pytest.raises(DataError, match="no column 'height'"):
        parse_conditions(["height>2"], splits.schema)
    conds = parse_conditions("sex=F and age>60", splits.schema)
    assert [(c.column, c.op, c.value) for c in conds] == [("sex", "=", "F"), ("age", ">", 60.0)]


def test_more_rows_than_memory_allows_is_refused_before_drawing(monkeypatch):
    monkeypatch.setenv("GENFORGE_MAX_DATA_BYTES", str(10 * 2**20))
    check_rows_fit(1000, dim=40, columns=10)
    with pytest.raises(DataError, match=r"10000000 rows would take about .* GiB .* data budget"):
        check_rows_fit(10_000_000, dim=40, columns=10)


@pytest.mark.parametrize("body, rows", [("", 0), ("1,2\n", 1)])
def test_zero_or_one_row_is_refused(tmp_path, body, rows):
    path = write(tmp_path, "a,b\n" + body)
    with pytest.raises(DataError, match=f"{rows} data row"):
        read_raw(f"csv:{path}")


def test_repeated_header_name_and_missing_file_are_one_line(tmp_path):
    with pytest.raises(DataError, match="column name 'a' appears twice"):
        read_raw(f"csv:{write(tmp_path, 'a,b,a' + chr(10) + '1,2,3' + chr(10) + '4,5,6')}")
    with pytest.raises(DataError, match="no such file"):
        read_raw(f"csv:{tmp_path / 'nope.csv'}")
    with pytest.raises(DataError, match="unknown table source spec"):
        read_raw("xls:data.xls")


# ----------------------------------------------------------------------------------- transforms: exact round trips

@pytest.mark.parametrize("method", ["vgm", "quantile"])
def test_transform_round_trip_returns_the_users_cells_exactly(tmp_path, method):
    """Encode then decode gives back every cell as written: numbers to their decimals, dates, labels, missing."""
    path = write(tmp_path, patients(120))
    raw = read_raw(f"csv:{path}")
    schema, _ = infer_schema(raw)
    table = apply_schema(raw, schema)
    tf = TableTransformer.fit(table, method)
    back = to_text_columns(tf.decode(tf.encode(table, dtype=np.float64)))
    for name in ("age", "weight", "sex", "smoker", "visit", "cd4"):
        assert back[name] == ["" if c is None else c for c in raw.cells[name]], name
    # float32 (what the networks see) still writes the same cells
    back32 = to_text_columns(tf.decode(tf.encode(table)))
    assert back32 == back


@pytest.mark.parametrize("method", ["vgm", "quantile"])
def test_fitted_transform_survives_json_exactly(method):
    import json

    splits = load_table("table:diabetes")
    tf = TableTransformer.fit(splits.train, method)
    again = TableTransformer.from_json(json.loads(json.dumps(tf.to_json())))
    x = tf.encode(splits.test, dtype=np.float64)
    assert np.array_equal(again.encode(splits.test, dtype=np.float64), x)
    a, b = tf.decode(x), again.decode(x)
    for k in a.values:
        same = (list(a.values[k]) == list(b.values[k]) if a.values[k].dtype == object
                else np.array_equal(a.values[k], b.values[k], equal_nan=True))
        assert same, k


def test_vgm_finds_the_modes_of_a_bimodal_column():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-10, 1, 300), rng.normal(20, 2, 300)])
    from genforge.data.table.transforms import _fit_vgm

    modes = sorted(_fit_vgm(values, 10, 0)["means"])
    assert len(modes) >= 2 and modes[0] == pytest.approx(-10, abs=1) and modes[-1] == pytest.approx(20, abs=1.5)


def test_decoding_keeps_the_schemas_constraints():
    """Whatever a network outputs, decoded rows stay within range, whole where integer, in the fixed set."""
    splits = load_table("table:gbsg2")
    for method in ("vgm", "quantile"):
        tf = TableTransformer.fit(splits.train, method)
        wild = np.random.default_rng(1).normal(0, 5, (500, tf.dim))  # far outside anything seen
        out = tf.decode(wild)
        for col in splits.schema.modelled:
            v = out.values[col.name]
            if col.kind in ("categorical", "boolean"):
                assert set(v) <= set(col.categories) | {None}
            else:
                p = v[~np.isnan(v)]
                assert p.min() >= col.min and p.max() <= col.max
                if col.kind == "integer":
                    assert np.all(p == np.round(p))


def test_missing_values_are_their_own_state_in_both_transforms():
    splits = load_table("table:actg175")
    rate = np.isnan(splits.train.values["cd496"]).mean()
    assert 0.3 < rate < 0.45
    for method in ("vgm", "quantile"):
        tf = TableTransformer.fit(splits.train, method)
        back = tf.decode(tf.encode(splits.train))
        assert np.isnan(back.values["cd496"]).mean() == rate


def test_bundled_tables_name_their_task_and_actg175_its_leaks():
    splits = load_table("table:actg175")
    assert splits.schema.target == "cens" and splits.schema.task == "classification"
    assert {"cd420", "cd496", "cd820", "offtrt", "r"} <= set(splits.schema.exclude_from_task)
    text = splits.describe()
    assert "leak the outcome" in text and "cd420" in text
    assert len(splits.train) + len(splits.val) + len(splits.test) == 2139
    assert load_table("table:breast_cancer").schema.task == "classification"
    assert load_table("table:diabetes").schema.task == "regression"
