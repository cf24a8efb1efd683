"""The restricted unpickler: real trajectory pickles load, code-running ones are refused."""

import os
import pickle

import numpy as np
import pytest
from decision_transformer.data.pickle_io import UnsafePickleError, load_paths_file, save_paths


def sample_paths():
    return [
        {
            "observations": np.arange(12, dtype=np.float32).reshape(4, 3),
            "actions": np.ones((4, 2), np.float32),
            "rewards": np.array([1.0, 2.0, 3.0, 4.0]),
            "terminals": np.array([False, False, False, True]),
        }
    ]


@pytest.mark.parametrize("protocol", range(6))
def test_every_pickle_protocol_loads(tmp_path, protocol):
    f = tmp_path / "d.pkl"
    f.write_bytes(pickle.dumps(sample_paths(), protocol=protocol))
    got = load_paths_file(f)
    np.testing.assert_array_equal(got[0]["observations"], sample_paths()[0]["observations"])
    assert got[0]["terminals"].dtype == bool


def test_numpy1_era_module_names_load(tmp_path):
    """D4RL-era files name numpy.core.multiarray; numpy 2 writes numpy._core."""
    raw = pickle.dumps(sample_paths(), protocol=2)
    assert b"numpy._core" in raw
    f = tmp_path / "old.pkl"
    f.write_bytes(raw.replace(b"numpy._core", b"numpy.core"))
    np.testing.assert_array_equal(load_paths_file(f)[0]["rewards"], [1, 2, 3, 4])


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pkl"
    f.write_bytes(pickle.dumps([{"observations": Exploit(marker)}]))
    with pytest.raises(UnsafePickleError, match="system"):
        load_paths_file(f)
    assert not marker.exists()
    # The same file through plain pickle would have run the command: the test can fail.
    pickle.loads(f.read_bytes())
    assert marker.exists()


def test_save_is_atomic_and_roundtrips(tmp_path):
    f = tmp_path / "sub" / "x.pkl"
    save_paths(sample_paths(), f)
    assert [p.name for p in f.parent.iterdir()] == ["x.pkl"]  # no temp file left behind
    assert load_paths_file(f)[0]["actions"].shape == (4, 2)
