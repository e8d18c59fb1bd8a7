"""Property tests of the recording reader on random, truncated and corrupted files.

:func:`mushu_core.recordings.load` may refuse a broken recording with
OSError or ValueError naming the file, and nothing else; what it returns
never holds more samples than ``NAME.eeg`` has bytes for.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mushu_core.recordings import escape_label, load

META = {"Channels": ["C3", "Cz", "C4"], "Sampling Frequency": 500.0, "Amp": "rampamp",
        "mushu": {"gaps": [{"sample": 2, "count": 1}], "units": ["uV"] * 3}}
EEG = np.arange(30, dtype="<f4").tobytes()
MARKERS = "".join(f"{ms:f} {escape_label(label)}\n" for ms, label in [(0.0, "S 1"), (2.5, " pad\n"), (9, "ü")])
VALID = {".meta": json.dumps(META).encode(), ".eeg": EEG, ".marker": MARKERS.encode()}

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=10)
META_FIELDS = st.dictionaries(st.sampled_from(["Channels", "Sampling Frequency", "Amp", "mushu"]), JSON,
                              max_size=3)


def load_files(files: dict):
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "rec")
        for ext, content in files.items():
            if content is not None:
                with open(base + ext, "wb") as f:
                    f.write(content)
        try:
            rec = load(base + ".meta")
        except (OSError, ValueError) as exc:
            assert str(exc)
            return None
        assert rec.data.nbytes <= len(files.get(".eeg") or b"")  # no allocation beyond the file
        assert rec.data.shape[1] == len(rec.channels) and rec.fs > 0
        assert all(isinstance(ms, float) and isinstance(label, str) for ms, label in rec.markers)
        rec.marker_samples()
        assert isinstance(rec.gaps, list)
        return rec


def test_the_valid_recording_reads_back():
    rec = load_files(VALID)
    assert rec.data.shape == (10, 3) and [label for _ms, label in rec.markers] == ["S 1", " pad\n", "ü"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID)), st.data())
def test_truncated_or_corrupted_files(ext, data):
    content = VALID[ext]
    cut = data.draw(st.integers(0, len(content)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, cut - 1)), st.integers(0, 255)), max_size=4))
    broken = bytearray(content[:cut])
    for pos, value in flips:
        if pos < len(broken):
            broken[pos] = value
    load_files({**VALID, ext: bytes(broken)})


@settings(max_examples=300, deadline=None)
@given(META_FIELDS, st.lists(st.sampled_from(sorted(META)), max_size=2))
def test_meta_fields_of_any_type(changes, removed):
    meta = {k: v for k, v in META.items() if k not in removed} | changes
    load_files({**VALID, ".meta": json.dumps(meta).encode()})


@settings(max_examples=200, deadline=None)
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)),
       st.binary(max_size=64), st.binary(max_size=64) | st.none())
def test_random_files(meta, eeg, marker):
    load_files({".meta": meta, ".eeg": eeg, ".marker": marker})


@pytest.mark.parametrize("files, words", [
    ({".meta": b"[" * 100_000}, "not JSON"),
    ({".meta": b'{"Channels": [], "Sampling Frequency": 1}'}, "'Channels'"),
    ({".meta": b'{"Channels": ["a"], "Sampling Frequency": NaN}'}, "'Sampling Frequency'"),
    ({".meta": b'{"Channels": ["a"], "Sampling Frequency": 1, "mushu": []}'}, "'mushu'"),
    ({".marker": b"1.0 ok\nnot-a-number label\n"}, "line 2"),
    ({".marker": b"1.0 \xff\n"}, "line 1"),
])
def test_malformed_files_are_refused_naming_the_file_and_field(files, words):
    with tempfile.TemporaryDirectory() as d:
        for ext, content in {**VALID, **files}.items():
            with open(os.path.join(d, "rec" + ext), "wb") as f:
                f.write(content)
        with pytest.raises(ValueError, match=words) as exc:
            load(os.path.join(d, "rec"))
        assert "rec." in str(exc.value)
