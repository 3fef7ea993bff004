"""The series data layer: the .ts parser, ucr: (sktime's archive files), tep: (tep-studio), CSV/npz logs.

Bad inputs are tiny hand-written files in tests/fixtures/series. Tests that need sktime's archive files or
the tep-studio simulator skip when those extras are absent (pip install 'genforge[series]').
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from genforge.data.series import Normalization, check_series, load_series, parse_series_spec
from genforge.data.series import tep as tep_mod
from genforge.data.series import ucr
from genforge.data.series.base import fit_normalization, sliding_windows
from genforge.data.series.ts import read_ts
from genforge.data.series.windows import read_csv_log, read_npz_log
from genforge.errors import DataError
from genforge.modalities.series import SERIES

FIX = Path(__file__).parent / "fixtures" / "series"
needs_sktime = pytest.mark.skipif(importlib.util.find_spec("sktime") is None,
                                  reason="sktime (the archive files) not installed: pip install 'genforge[series]'")
TINY_TEP = "faults=1;seeds=0;train=20;test=40;onset=10;warmup=4"


# --- the .ts parser -----------------------------------------------------------------------------------------


def test_ts_reads_dimensions_labels_and_fills_missing():
    data = read_ts(FIX / "good.ts", missing="fill")
    assert data.header.problem_name == "Tiny" and data.class_names == ["up", "down"]
    assert [s.shape for s in data.series] == [(2, 4)] * 3 and all(s.dtype == np.float32 for s in data.series)
    assert data.y.tolist() == [0, 1, 0] and data.y.dtype == np.int64
    np.testing.assert_array_equal(data.series[1], [[4, 3, 2, 1], [40, 30, 20, 10]])
    # '?' inside a series is interpolated; at the end it takes the nearest observed sample.
    np.testing.assert_array_equal(data.series[2], [[1, 2, 3, 4], [10, 20, 30, 30]])
    assert data.filled == 2


def test_ts_missing_values_refused_unless_fill_is_configured():
    with pytest.raises(DataError, match=r"good\.ts: line 13: missing value '\?' \(dimension 1, sample 2\); "
                                        r"use missing='fill'"):
        read_ts(FIX / "good.ts")


@pytest.mark.parametrize("name, message", [
    ("bad_header.ts", r"bad_header\.ts: line 2: malformed header: @timeStamps must be true or false, got 'maybe'"),
    ("unknown_label.ts", r"unknown_label\.ts: line 8: class label 'c' is not declared in the header's "
                         r"@classLabel \(a b\)"),
    ("nan.ts", r"nan\.ts: line 8: dimension 1, sample 2: 'NaN' is not a finite number \(NaN or infinite; "
               r"a missing value is written '\?'\)"),
    ("inf.ts", r"inf\.ts: line 8: dimension 1, sample 3: 'inf' is not a finite number"),
    ("ragged_declared_equal.ts", r"ragged_declared_equal\.ts: line 9: ragged lengths: series of length 3, but "
                                 r"line 8 has 4 and the header says @equalLength true"),
])
def test_ts_bad_files_name_file_and_line(name, message):
    with pytest.raises(DataError, match=message):
        read_ts(FIX / name, missing="fill")  # fill: NaN and inf are errors even where '?' would be filled


HEAD = "@problemName X\n@timeStamps false\n@univariate true\n"


@pytest.mark.parametrize("text, message", [
    (HEAD + "@classLabel true a\n", r"malformed header: no @data line"),
    ("@problemName X\n@univariate true\n@data\n1,2\n", r"no @classLabel line"),
    (HEAD + "@colour red\n@classLabel true a\n@data\n", r"line 4: malformed header: unknown tag @colour"),
    (HEAD + "@classLabel true a a\n@data\n", r"line 4: malformed header: @classLabel lists 'a' twice"),
    (HEAD + "@classLabel true\n@data\n", r"line 4: malformed header: @classLabel true lists no class labels"),
    (HEAD + "@classLabel true a\n@data\n", r"no cases after @data"),
    (HEAD + "@problemName Y\n@classLabel true a\n@data\n", r"line 4: malformed header: @problemName given twice"),
    ("@univariate false\n@dimensions 2\n@classLabel true a\n@data\n1,2:a\n", r"line 5: 1 dimension\(s\), but the "
                                                                            r"header declares 2"),
    ("@univariate false\n@dimensions 2\n@classLabel true a\n@data\n1,2:3:a\n", r"line 5: the dimensions of one case "
                                                                              r"have different lengths \(2, 1\)"),
    (HEAD + "@seriesLength 3\n@classLabel true a\n@data\n1,2:a\n", r"line 7: series of length 2, but the header says "
                                                                 r"@seriesLength 3"),
    (HEAD + "@classLabel true a\n@data\n1,x,3:a\n", r"line 6: dimension 1, sample 2: 'x' is not a number"),
    (HEAD + "@missing false\n@classLabel true a\n@data\n1,?:a\n", r"line 7: missing value '\?' but the header says "
                                                                r"@missing false"),
    ("@timeStamps true\n@classLabel true a\n@data\n", r"line 1: @timeStamps true files are not supported"),
    (HEAD + "@targetLabel true\n@data\n", r"line 4: @targetLabel true: regression targets are not supported"),
    ("1,2,3:a\n", r"line 1: malformed header: expected an @tag"),
])
def test_ts_malformed_files(tmp_path, text, message):
    path = tmp_path / "case.ts"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"case\.ts: .*{message}"):
        read_ts(path)


def test_ts_length_policies_on_ragged_cases():
    from genforge.data.series.base import apply_length_policy, target_length

    data = read_ts(FIX / "ragged.ts")  # lengths 6, 3, 4
    where = [data.where(i) for i in range(3)]
    lengths = data.lengths
    assert lengths.tolist() == [6, 3, 4]
    with pytest.raises(DataError, match=r"ragged\.ts: line 9: series of length 3, but length_policy equal needs "
                                        r"every series 6 long"):
        apply_length_policy(data.series, "equal", target_length("equal", lengths, None), where)

    pad = apply_length_policy(data.series, "pad", target_length("pad", lengths, None), where)
    assert pad.x.shape == (3, 1, 6) and pad.mask.sum(axis=1).tolist() == [6, 3, 4]
    np.testing.assert_array_equal(pad.x[1, 0], [1, 2, 3, 0, 0, 0])

    res = apply_length_policy(data.series, "resample", target_length("resample", lengths, 5), where)
    assert res.x.shape == (3, 1, 5) and res.mask is None
    np.testing.assert_allclose(res.x[1, 0], [1, 1.5, 2, 2.5, 3])  # end points kept, linear between
    np.testing.assert_allclose(res.x[0, 0], [1, 2.25, 3.5, 4.75, 6])

    crop = apply_length_policy(data.series, "crop", target_length("crop", lengths, None), where)
    assert crop.x.shape == (3, 1, 3)
    np.testing.assert_array_equal(crop.x[:, 0], [[1, 2, 3], [1, 2, 3], [2, 4, 6]])

    with pytest.raises(DataError, match=r"line 9: series of length 3 is shorter than the crop length 4"):
        apply_length_policy(data.series, "crop", 4, where)
    with pytest.raises(DataError, match=r"line 8: series of length 6 does not fit the pad length 5"):
        apply_length_policy(data.series, "pad", 5, where)
    with pytest.raises(DataError, match=r"length_policy must be one of equal, pad, resample, crop; got 'squash'"):
        apply_length_policy(data.series, "squash", 5, where)


# --- ucr: ---------------------------------------------------------------------------------------------------


def test_ucr_without_sktime_names_the_extra(monkeypatch):
    monkeypatch.setattr(ucr.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"ucr: data sets need the sktime package.*pip install 'genforge\[series\]'"):
        load_series("ucr:GunPoint")


@needs_sktime
def test_ucr_gunpoint_1nn_euclidean_matches_the_archive():
    data = ucr.load_ucr("GunPoint")
    train, test = data.train.x[:, 0].astype(np.float64), data.test.x[:, 0].astype(np.float64)  # (50, 150), (150, 150)
    assert train.shape == (50, 150) and test.shape == (150, 150)
    d2 = ((test[:, None, :] - train[None, :, :]) ** 2).sum(-1)  # (150, 50) squared Euclidean distances
    accuracy = float((data.train.y[d2.argmin(axis=1)] == data.test.y).mean())
    # The UCR archive's published 1-NN Euclidean error on GunPoint is 0.087, i.e. 137 of 150 right.
    assert round(accuracy, 3) == 0.913 and accuracy == 137 / 150


@needs_sktime
def test_ucr_basicmotions_multivariate_shapes_and_classes():
    data = ucr.load_ucr("BasicMotions")
    assert data.train.x.shape == (40, 6, 100) and data.test.x.shape == (40, 6, 100)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int64
    assert data.class_names == ["Standing", "Running", "Walking", "Badminton"]
    assert np.bincount(data.train.y).tolist() == [10, 10, 10, 10]


@needs_sktime
def test_ucr_variable_length_set_under_each_policy():
    raw = read_ts(ucr.files("JapaneseVowels")[0])
    lengths = raw.lengths
    assert lengths.min() == 7 and lengths.max() == 26  # train; the test split reaches 29
    with pytest.raises(DataError, match=r"JapaneseVowels_TRAIN\.ts: line \d+: series of length \d+, but "
                                        r"length_policy equal needs every series 29 long"):
        ucr.load_ucr("JapaneseVowels")
    pad = ucr.load_ucr("JapaneseVowels", length_policy="pad")
    assert pad.train.x.shape == (270, 12, 29) and pad.test.x.shape == (370, 12, 29)
    assert (pad.train.mask.sum(axis=1) == lengths).all() and (pad.train.lengths == lengths).all()
    assert not pad.train.x[~np.broadcast_to(pad.train.mask[:, None], pad.train.x.shape)].any()  # zeros past the end
    res = ucr.load_ucr("JapaneseVowels", length_policy="resample", length=32)
    assert res.train.x.shape == (270, 12, 32) and res.train.mask is None
    np.testing.assert_array_equal(res.train.x[:, :, 0], np.stack([s[:, 0] for s in raw.series]))
    np.testing.assert_array_equal(res.train.x[:, :, -1], np.stack([s[:, -1] for s in raw.series]))
    crop = ucr.load_ucr("JapaneseVowels", length_policy="crop")
    assert crop.train.x.shape == (270, 12, 7) and crop.test.x.shape == (370, 12, 7)
    np.testing.assert_array_equal(crop.train.x, np.stack([s[:, :7] for s in raw.series]))
    assert pad.class_names == [str(k) for k in range(1, 10)]


@needs_sktime
@pytest.mark.parametrize("name, n_train, n_test", [
    ("ArrowHead", 36, 175), ("ItalyPowerDemand", 67, 1029), ("OSULeaf", 200, 242), ("ACSF1", 100, 100),
    ("PLAID", 537, 537),
])
def test_ucr_parser_reads_archive_sets(name, n_train, n_test):
    data = ucr.load_ucr(name, length_policy="resample", length=64)
    assert (len(data.train), len(data.test)) == (n_train, n_test)
    assert np.isfinite(data.train.x).all() and data.train.y.max() == len(data.class_names) - 1


@needs_sktime
def test_ucr_names_errors_and_real_malformed_file():
    with pytest.raises(DataError, match=r"ucr:gunpoint is not among.*\(did you mean GunPoint\?\); available: .*"
                                        r"BasicMotions.*GunPoint"):
        load_series("ucr:gunpoint")
    # sktime's own UnitTest_TEST.ts names two problems; the parser says where.
    with pytest.raises(DataError, match=r"UnitTest_TEST\.ts: line 5: malformed header: @problemName given twice"):
        load_series("ucr:UnitTest")
    with pytest.raises(DataError, match=r"Tecator_TRAIN\.ts: line 16: @targetLabel true: regression targets"):
        load_series("ucr:Tecator")


@needs_sktime
def test_load_series_ucr_normalizes_with_train_statistics_and_inverts():
    raw = ucr.load_ucr("BasicMotions")
    splits = load_series("ucr:BasicMotions", val_fraction=0.25, seed=3)
    assert splits.example_shape == (6, 100) and (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 40)
    np.testing.assert_allclose(splits.train.x.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(splits.train.x.std(axis=(0, 2)), 1, atol=1e-4)
    np.testing.assert_allclose(splits.normalization.invert(splits.test.x), raw.test.x, rtol=1e-5, atol=1e-4)
    again = Normalization.from_json(splits.normalization.to_json(), "model.json")
    np.testing.assert_array_equal(again.scale, splits.normalization.scale)
    assert "train: 30 examples (Standing 7" in splits.describe()
    with pytest.raises(DataError, match=r"model\.json: normalization needs equal-length finite shift"):
        Normalization.from_json({"method": "zscore", "shift": [0.0, 1.0], "scale": [1.0, 0.0]}, "model.json")


def test_asinh_normalization_keeps_the_common_case_wide_and_inverts():
    """Normal operation (unit noise) with one fault excursion 200 spreads away: minmax squeezes the noise into
    about 1% of [-1, 1]; asinh keeps it near a fifth, spans [-1, 1] exactly, and inverts to the data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 50)) * [[3.0], [0.5]] + [[100.0], [-7.0]]
    x[3, 0, 10:20] += 600.0                                      # a fault: 200 spreads of channel 0
    wide, flat = fit_normalization(x, "asinh"), fit_normalization(x, "minmax")
    u = wide.apply(x)
    assert u.dtype == np.float32 and u.max() == pytest.approx(1.0) and u.min() >= -1.0
    normal = np.delete(u, 3, axis=0)[:, 0]
    assert normal.std() > 10 * np.delete(flat.apply(x), 3, axis=0)[:, 0].std() and 0.1 < normal.std() < 0.3
    np.testing.assert_allclose(wide.invert(u), x, rtol=1e-5)
    np.testing.assert_allclose(wide.shift, np.median(x, axis=(0, 2)))
    again = Normalization.from_json(wide.to_json(), "model.json")
    np.testing.assert_array_equal(again.invert(u), wide.invert(u))
    held = wide.invert(np.full((1, 2, 1), 3.0, np.float32))      # beyond the range: held at its edge
    np.testing.assert_allclose(held[0, :, 0], wide.invert(np.ones((1, 2, 1), np.float32))[0, :, 0])
    const = fit_normalization(np.full((4, 1, 5), 2.5), "asinh")
    assert const.constant == (0,) and np.array_equal(const.apply(np.full((1, 1, 5), 2.5)), np.zeros((1, 1, 5)))


# --- series-csv: and series-npz: logs -----------------------------------------------------------------------


def test_csv_log_windows_labels_fill_and_normalization():
    spec = f"series-csv:{FIX / 'good.csv'}"
    splits = load_series(spec, window=3, stride=1, time_column="t", label_column="state", missing="fill",
                         val_fraction=0, test_fraction=0)
    # 10 rows -> 8 windows of 3; the two spanning the ok -> fault change (rows 4-6, 5-7) are left out.
    assert splits.train.x.shape == (6, 2, 3) and splits.channel_names == ["temp", "pressure"]
    assert splits.class_names == ["fault", "ok"] and splits.train.y.tolist() == [1, 1, 1, 1, 0, 0]
    log = read_csv_log(FIX / "good.csv", time_column="t", label_column="state", missing="fill")
    assert log.values[5, 1] == pytest.approx(101.2)  # the empty cell, interpolated
    np.testing.assert_allclose(splits.normalization.shift, log.values.mean(axis=0))
    np.testing.assert_allclose(splits.normalization.invert(splits.train.x)[0], log.values[0:3].T, rtol=1e-6)
    assert "1 missing values filled" in splits.describe() and "2 window(s) straddling" in splits.describe()


def test_csv_log_split_by_time_keeps_parts_apart(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(100)))
    splits = load_series(f"series-csv:{path}", window=10, stride=10, normalize="none",
                         val_fraction=0.2, test_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert splits.train.x[:, 0].max() == 59 and splits.val.x[:, 0].min() == 60 and splits.test.x[:, 0].min() == 80


def test_sliding_windows_is_one_view_for_every_stride():
    """The one window cutter (logs, TEP windows, detectors, diagnosis): window k starts at k * stride."""
    run = np.arange(2 * 11).reshape(2, 11)  # (C, L)
    w = sliding_windows(run, 4, stride=3)
    assert w.shape == (3, 2, 4) and np.shares_memory(w, run) and not w.flags.writeable
    for k in range(3):
        np.testing.assert_array_equal(w[k], run[:, 3 * k:3 * k + 4])
    assert sliding_windows(run, 11).shape == (1, 2, 11) and sliding_windows(run, 12).shape == (0, 2, 12)
    np.testing.assert_array_equal(sliding_windows(np.arange(6), 2, stride=2), [[0, 1], [2, 3], [4, 5]])  # (L,)


@pytest.mark.parametrize("name, kwargs, message", [
    ("non_numeric.csv", {}, r"non_numeric\.csv: line 3, column 'pressure': 'high' is not a number"),
    ("duplicate_time.csv", {"time_column": "t"}, r"duplicate_time\.csv: line 4: column 't': duplicate time stamp 1 "
                                                 r"\(also on line 3\)"),
    ("gap_time.csv", {"time_column": "t"}, r"gap_time\.csv: line 5: column 't': missing time stamps: a step of 3 "
                                           r"after 2, where the log steps by 1"),
    ("nan.csv", {"time_column": "t"}, r"nan\.csv: line 3, column 'temp': 'nan' is not a finite number"),
    ("good.csv", {"time_column": "t", "label_column": "state"}, r"good\.csv: line 7, column 'pressure': missing "
                                                                r"value; use missing='fill'"),
    ("good.csv", {"time_column": "time"}, r"good\.csv: time_column 'time' is not a column; columns: t, temp"),
])
def test_csv_bad_logs(name, kwargs, message):
    with pytest.raises(DataError, match=message):
        read_csv_log(FIX / name, **kwargs)


def test_csv_missing_time_stamp_and_short_log(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("t,a\n0,1\n,2\n2,3\n")
    with pytest.raises(DataError, match=r"t\.csv: line 3: column 't': missing time stamp"):
        read_csv_log(path, time_column="t")
    with pytest.raises(DataError, match=r"good\.csv: 10 rows, fewer than one window of 20"):
        load_series(f"series-csv:{FIX / 'good.csv'}", window=20, label_column="state", missing="fill")
    with pytest.raises(DataError, match=r"series-csv sources are long recordings; name a window length"):
        load_series(f"series-csv:{FIX / 'good.csv'}")


def test_npz_log_nan_is_missing_and_inf_is_refused(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    x[3, 1] = np.nan
    path = tmp_path / "log.npz"
    np.savez(path, x=x, y=np.repeat([0, 1], 10), channels=np.array(["flow", "level"]))
    with pytest.raises(DataError, match=r"log\.npz: x row 3, column 'level': missing value; use missing='fill'"):
        read_npz_log(path)
    log = read_npz_log(path, missing="fill")
    assert log.values[3, 1] == pytest.approx(7.0) and log.channel_names == ["flow", "level"] and log.filled == 1
    splits = load_series(f"series-npz:{path}", window=5, stride=5, missing="fill", val_fraction=0, test_fraction=0)
    assert splits.train.x.shape == (4, 2, 5) and splits.train.y.tolist() == [0, 0, 1, 1]
    x[3, 1] = np.inf
    np.savez(path, x=x)
    with pytest.raises(DataError, match=r"log\.npz: x row 3, channel 1: infinite value"):
        read_npz_log(path, missing="fill")
    np.savez(path, x=np.array([object()] * 4, dtype=object))
    with pytest.raises(DataError, match=r"log\.npz: x\.npy is an object array"):
        read_npz_log(path)


def test_series_spec_forms():
    assert parse_series_spec("ucr:GunPoint") == ("ucr", "GunPoint") and parse_series_spec("tep:") == ("tep", "")
    with pytest.raises(DataError, match=r"unknown series source spec 'npz:x\.npz'; valid forms: ucr:NAME"):
        parse_series_spec("npz:x.npz")  # npz: is the image modality's
    with pytest.raises(DataError, match=r"names nothing after 'ucr:'"):
        parse_series_spec("ucr:")
    assert set(SERIES.sources) == {"ucr", "tep", "series-csv", "series-npz"} and SERIES.example_axes == ("c", "t")


# --- tep: ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ("faults=x", r"'x' is not a whole number or a range like 1-21"),
    ("bogus=1", r"option 'bogus=1' is not one of faults=, seeds=, train=, test=, onset=, warmup="),
    ("warmup=-1", r"'-1' is not a whole number|warmup= must be 0 or more"),
    ("test=40;onset=50", r"onset=50 must lie within the test run \(0 to 39\)"),
    ("seeds=1,1", r"seeds must be distinct non-negative integers"),
    ("train=1-3", r"train= takes one whole number"),
])
def test_tep_option_errors(options, message):
    with pytest.raises(DataError, match=message):
        tep_mod.parse_options(options)


def test_tep_missing_or_broken_simulator_names_the_extra(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tep_mod.importlib.metadata, "version", absent)
    with pytest.raises(DataError, match=r"tep: needs the Tennessee Eastman simulator tep-studio==0\.2\.0: "
                                        r"pip install 'genforge\[series\]'"):
        tep_mod.load_tep(TINY_TEP)
    # Installed, but the compiled kernel failed to build: importing it fails.
    monkeypatch.setattr(tep_mod.importlib.metadata, "version", lambda name: "0.2.0")
    monkeypatch.setitem(sys.modules, "tep_studio", None)
    with pytest.raises(DataError, match=r"tep-studio 0\.2\.0 is installed but its compiled simulator does not load "
                                        r"\(\w*Error: .*\); reinstall it with gcc present: pip install"):
        tep_mod.load_tep(TINY_TEP)


@pytest.fixture(scope="module")
def tep_cache(tmp_path_factory):
    pytest.importorskip("tep_studio")
    return tmp_path_factory.mktemp("tep-cache")


def test_tep_package_own_check(tep_cache):
    check = tep_mod.self_check(horizon_h=1.0)
    assert check == {"schema_ok": True, "stabilized": True, "final_time_h": pytest.approx(1.0)}


def test_tep_tiny_simulation_is_cached_and_described(tep_cache, monkeypatch):
    data = tep_mod.load_tep(TINY_TEP, cache=tep_cache)
    assert data.train.x.shape == (2, 53, 20) and data.test.x.shape == (2, 53, 40) and data.train.x.dtype == np.float32
    assert data.train.fault.tolist() == [0, 1] and data.test.length.tolist() == [40, 40]
    assert data.class_names == ["normal", "IDV01"] and data.channel_names[0] == "feed_A_flow"
    assert np.isfinite(data.test.x).all()
    # Each run has its own noise: a normal and a faulty run differ even before the fault.
    assert not np.array_equal(data.test.x[0, :, :10], data.test.x[1, :, :10])
    text = data.describe()
    assert "tep-studio 0.2.0" in text and "normal + IDV 1, seeds 0, each after 4 unrecorded samples (0.2 h)" in text
    assert "test: 2 runs x 40 samples (2 h, the fault introduced at sample 10)" in text
    assert data.path.parent == tep_cache and data.path.name.startswith("tep-studio-0.2.0-")
    # The second load reads the cache: simulating again would fail here.
    monkeypatch.setattr(tep_mod, "_run", lambda *a: pytest.fail("simulated again instead of reading the cache"))
    again = tep_mod.load_tep(TINY_TEP, cache=tep_cache)
    np.testing.assert_array_equal(again.test.x, data.test.x)
    assert check_series(f"tep:{TINY_TEP}", cache=tep_cache) == text
    # A damaged cache file is simulated again (the same seeds give the same runs) and replaced atomically.
    monkeypatch.undo()
    data.path.write_bytes(b"not an npz")
    said = []
    fresh = tep_mod.load_tep(TINY_TEP, cache=tep_cache, log=said.append)
    assert "unreadable or stale; simulating again" in said[0]
    np.testing.assert_array_equal(fresh.test.x, data.test.x)
    assert tep_mod.load_tep(TINY_TEP, cache=tep_cache).meta["when"] == fresh.meta["when"]


def test_tep_same_seed_same_run(tep_cache):
    tep = tep_mod.simulator()
    a, _ = tep_mod._run(tep, 1, 5, 2, tep_mod._kernel_seed(0, 1, 1), 28)
    b, _ = tep_mod._run(tep, 1, 5, 2, tep_mod._kernel_seed(0, 1, 1), 28)
    c, _ = tep_mod._run(tep, 1, 5, 2, tep_mod._kernel_seed(1, 1, 1), 28)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 53) and not np.array_equal(a, c)
    # Warm-up samples are simulated but not recorded, and the onset counts from the first recorded sample.
    warmed, _ = tep_mod._run(tep, 1, 3, 0, tep_mod._kernel_seed(0, 1, 1), 28, warmup=2)
    np.testing.assert_array_equal(warmed, a[2:])


def test_tep_fault_the_simulator_lacks(tep_cache):
    with pytest.raises(DataError, match=r"tep: fault IDV 29 is not in tep-studio 0\.2\.0, which has IDV 1-28"):
        tep_mod.load_tep("faults=1,29;seeds=0;train=5;test=10;onset=2", cache=tep_cache)


def test_load_series_tep_windows_by_fault(tep_cache):
    splits = load_series(f"tep:{TINY_TEP}", window=5, stride=5, cache=tep_cache)
    # Training runs of 20 samples: the first 18 give windows at 0, 5, 10 for train; the last 2 are too few for val.
    assert splits.train.x.shape == (6, 53, 5) and splits.train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(splits.val) == 0
    # Test runs of 40 samples with onset 10: windows before sample 10 of the faulty run are normal.
    assert splits.test.y.tolist() == [0] * 8 + [0, 0, 1, 1, 1, 1, 1, 1]
    assert splits.class_names == ["normal", "IDV01"]
    assert splits.normalization.constant  # the valves the controller never moves


def test_data_check_reads_series_specs(capsys):
    pytest.importorskip("sktime", reason="the series extra is not installed: pip install -e '.[series]'")
    from genforge.cli import main

    assert main(["data", "check", "ucr:GunPoint"]) == 0
    out = capsys.readouterr().out
    assert "ucr:GunPoint: 1 channel(s) x 150 samples per example" in out and "test: 150 examples" in out
    assert main(["data", "check", "series-csv:/nonexistent.csv", "--window", "8"]) == 2
