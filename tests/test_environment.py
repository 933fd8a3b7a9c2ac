"""lstm_ext's environment variables: a value the core does not take gets a
RuntimeWarning at import naming the variable, what it takes and the value,
and the core then does what the warning says (its default)."""

import os
import subprocess
import sys

import pytest

from lstm_ext._checks import check_environment

GOOD = {
    "LSTM_EXT_NUM_THREADS": ["1", "2", " 3", "+2", "1024"],
    "LSTM_EXT_BUFFER_CACHE_MB": ["0", "1024", "64"],
    "LSTM_EXT_PACKED_RECURRENT": ["0", "1"],
    "LSTM_EXT_PACKED_KERNEL": ["avx2"],
    "LSTM_EXT_CUDA_BLOCKS": ["8", "132"],
}
BAD = {
    "LSTM_EXT_NUM_THREADS": ["four", "0", "1025", "2 ", "1.5", "-1", "\u0663"],
    "LSTM_EXT_BUFFER_CACHE_MB": ["1G", "-1", "1.5", "1099511627776"],
    "LSTM_EXT_PACKED_RECURRENT": ["off", "false", "00", "0 "],
    "LSTM_EXT_PACKED_KERNEL": ["AVX2", "avx512", "scalar"],
    "LSTM_EXT_CUDA_BLOCKS": ["0", "8x", "many"],
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_values_the_core_takes_pass_quietly(name, recwarn):
    for value in [*GOOD[name], ""]:  # empty: unset
        assert check_environment({name: value}) == []
    assert not recwarn.list


@pytest.mark.parametrize("name", sorted(BAD))
def test_other_values_are_named_in_a_warning(name):
    for value in BAD[name]:
        with pytest.warns(RuntimeWarning) as got:
            messages = check_environment({name: value})
        assert len(messages) == 1 and str(got[0].message) == messages[0]
        assert messages[0].startswith(f"{name}: expected ")
        assert f"got {value!r}; ignored" in messages[0]


def _in_fresh_process(env):
    """Warnings at import and what the core then uses, in a new interpreter."""
    code = (
        "import lstm_ext, lstm_ext._core as c\n"
        "print(c.get_num_threads(), c.buffer_cache()[1], c.packed_recurrent_enabled(), "
        "c.packed_recurrent_kernel())\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_EXT_")}
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env={**base, **env},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stderr, out.stdout.split()


def test_the_core_uses_its_defaults_where_it_warned():
    err, default = _in_fresh_process({})
    assert "RuntimeWarning" not in err
    bad = {name: values[0] for name, values in BAD.items()}
    err, got = _in_fresh_process(bad)
    for name, value in bad.items():
        assert f"RuntimeWarning: {name}: expected " in err and f"got {value!r}" in err
    assert got == default  # threads, cache limit, packed path and kernel as if unset
    assert default[1] == str(1024 << 20)
    # And the values it takes still act.
    err, got = _in_fresh_process({"LSTM_EXT_NUM_THREADS": "3", "LSTM_EXT_BUFFER_CACHE_MB": "0",
                                  "LSTM_EXT_PACKED_RECURRENT": "0"})  # fmt: skip
    assert "RuntimeWarning" not in err
    assert got[:3] == ["3", "0", "False"]
