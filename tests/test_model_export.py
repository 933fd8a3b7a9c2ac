"""Train in Python, run in C++: export.save_model writes what
lstm_ext::Model reads (docs/model-format.md).

- The Python reader gives back the same parameters.
- examples/cpp builds against the installed CMake package, streams an
  exported model over input it reads, and prints what nn.LSTM computes, to
  float32 rounding (rtol 1e-5, form of helpers.assert_close: the C++ path is
  the same core in float32; float64 files are rounded to float32 on load).
- Both readers refuse every truncation of a valid file, corrupted header
  fields, impossible shapes (before allocating) and trailing bytes, with a
  message, never a crash.
"""

import shutil
import struct
import subprocess

import numpy as np
import pytest

import lstm_ext
from helpers import assert_close
from lstm_ext import _core, export, nn

CONFIGS = [
    dict(input_size=3, hidden_size=5),
    dict(input_size=4, hidden_size=6, num_layers=2, proj_size=3),
    dict(input_size=2, hidden_size=4, num_layers=2, bidirectional=True, bias=False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_python_round_trip(tmp_path, cfg, dtype):
    lstm = nn.LSTM(**cfg, dtype=dtype, seed=1)
    export.save_model(lstm, tmp_path / "m.lstmx")
    back = export.load_model(tmp_path / "m.lstmx")
    assert back.config() == lstm.config()
    for name, p in lstm.params.items():
        np.testing.assert_array_equal(back.params[name], p)
    assert _core._model_from_bytes((tmp_path / "m.lstmx").read_bytes())["num_layers"] == (
        cfg.get("num_layers", 1)
    )


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """examples/cpp built against the installed package."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip(reason="no cmake or c++ on PATH: cannot build examples/cpp")
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "examples" / "cpp"
    build = tmp_path_factory.mktemp("example")
    for cmd in (["cmake", "-S", str(src), "-B", str(build),
                 f"-Dlstm_ext_DIR={lstm_ext.get_cmake_dir()}"],
                ["cmake", "--build", str(build), "-j2"]):  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return build / "lstm_stream"


def stream(program, model_path, x):
    text = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in x)
    return subprocess.run([str(program), str(model_path)], input=text, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["one-layer", "two-layers-projection"])
def test_cpp_example_streams_what_python_computes(example, tmp_path, cfg, dtype):
    lstm = nn.LSTM(**cfg, dtype=dtype, seed=2).eval()
    export.save_model(lstm, tmp_path / "m.lstmx")
    x = np.random.default_rng(3).standard_normal((25, cfg["input_size"])).astype(dtype)
    r = stream(example, tmp_path / "m.lstmx", x)
    assert r.returncode == 0, r.stderr
    got = np.array([[float(v) for v in line.split()] for line in r.stdout.splitlines()])
    want, _ = lstm(x.astype(dtype))  # one sequence [T,I]
    assert_close("C++ stream", got, want, 1e-5)


def valid_bytes(tmp_path) -> bytes:
    lstm = nn.LSTM(3, 4, num_layers=2, proj_size=2, seed=5)
    export.save_model(lstm, tmp_path / "ok.lstmx")
    return (tmp_path / "ok.lstmx").read_bytes()


def both_refuse(tmp_path, data: bytes, words: str):
    """The C++ and the Python reader both raise, naming the problem."""
    with pytest.raises(ValueError, match=words):
        _core._model_from_bytes(data)
    (tmp_path / "bad.lstmx").write_bytes(data)
    with pytest.raises(export.FormatError, match=words):
        export.load_model(tmp_path / "bad.lstmx")


def test_every_truncation_is_refused(tmp_path):
    data = valid_bytes(tmp_path)
    for n in range(len(data)):
        both_refuse(tmp_path, data[:n], "truncated|magic")


def test_corrupt_headers_and_shapes_are_refused(tmp_path):
    data = valid_bytes(tmp_path)
    field = lambda k, v: data[: 8 + 4 * k] + struct.pack("<I", v) + data[12 + 4 * k :]  # noqa: E731
    both_refuse(tmp_path, b"NOTMODEL" + data[8:], "magic")
    both_refuse(tmp_path, field(0, 2), "version")
    both_refuse(tmp_path, field(1, 2), "dtype")
    both_refuse(tmp_path, field(2, 0), "input_size")
    both_refuse(tmp_path, field(3, 1 << 30), "hidden_size")  # refused before any allocation
    both_refuse(tmp_path, field(5, 4), "proj_size")
    both_refuse(tmp_path, field(6, 7), "bidirectional")
    both_refuse(tmp_path, field(8, 99), "tensors")
    both_refuse(tmp_path, data + b"\0", "after the last tensor")
    # a shape that claims far more data than the file holds
    first_dim = 8 + 4 * 9 + 4 + len("weight_ih_l0") + 4
    huge = data[:first_dim] + struct.pack("<Q", 1 << 40) + data[first_dim + 8 :]
    both_refuse(tmp_path, huge, "dimension 0|shape")


def messages(tmp_path, data: bytes) -> tuple[str, str]:
    """The C++ and the Python reader's messages for bad data, each without
    what it puts in front ("lstm_ext model: ", the path)."""
    with pytest.raises(ValueError) as cpp:
        _core._model_from_bytes(data)
    path = tmp_path / "bad.lstmx"
    path.write_bytes(data)
    with pytest.raises(export.FormatError) as py:
        export.load_model(path)
    return str(cpp.value).removeprefix("lstm_ext model: "), str(py.value).removeprefix(f"{path}: ")


u32 = struct.Struct("<I").pack
u64 = struct.Struct("<Q").pack

# valid_bytes' layout (docs/model-format.md): the magic at 0, the u32 header
# fields from 8 (version, dtype, input_size, hidden_size, num_layers,
# proj_size, bidirectional, bias, tensor count at 40); the first tensor,
# weight_ih_l0 [16, 3] float32, at 44: its name at 48, ndim at 60, dims at
# 64 and 72, values at 80; the second, weight_hh_l0, at 80 + 16 * 3 * 4.
FIRST, SECOND = 44, 272
FIELDS = [  # where the new bytes go, they, the offset reported, the problem
    pytest.param(0, b"NOTMODEL", 0, "not a model file", id="magic"),
    pytest.param(8, u32(2), 8, "format version 2,", id="version"),
    pytest.param(12, u32(2), 12, "dtype code 2 ", id="dtype"),
    pytest.param(16, u32(0), 16, "input_size = 0 is outside", id="input_size"),
    pytest.param(20, u32(1 << 30), 20, "hidden_size = 1073741824 is outside", id="hidden_size"),
    pytest.param(24, u32(1025), 24, "num_layers = 1025 is outside", id="num_layers"),
    pytest.param(28, u32(4), 28, "proj_size = 4 is outside [0, 3]", id="proj_size"),
    pytest.param(32, u32(7), 32, "bidirectional = 7 is outside", id="bidirectional"),
    pytest.param(36, u32(2), 36, "bias = 2 is outside", id="bias"),
    pytest.param(40, u32(99), 40, "99 tensors, expected 10", id="count"),
    pytest.param(FIRST, u32(65), FIRST, "name length = 65 is outside", id="name-length"),
    pytest.param(FIRST + 4, b"X", FIRST, "unexpected tensor 'Xeight_ih_l0'", id="name"),
    pytest.param(SECOND + 4, b"weight_ih_l0", SECOND, "tensor 'weight_ih_l0' twice", id="twice"),
    pytest.param(60, u32(9), 60, "'weight_ih_l0' has 9 dimensions, expected 2", id="ndim-9"),
    pytest.param(60, u32(1), 60, "'weight_ih_l0' has 1 dimensions, expected 2", id="ndim-1"),
    pytest.param(64, u64(1 << 40), 64, "'weight_ih_l0' dimension 0 is 1099511627776,", id="dim0"),
    pytest.param(72, u64(5), 72, "'weight_ih_l0' dimension 1 is 5, expected 3", id="dim1"),
]


@pytest.mark.parametrize("at, raw, reported, problem", FIELDS)
def test_each_corrupt_field_is_named_at_its_offset(tmp_path, at, raw, reported, problem):
    """One field changed: Python names the problem and the field's offset,
    in the C++ reader's words (which give no offset for the magic and the
    version)."""
    data = valid_bytes(tmp_path)
    cpp, py = messages(tmp_path, data[:at] + raw + data[at + len(raw) :])
    assert py.startswith(problem) and py.endswith(f" (byte {reported})"), py
    assert py == (cpp if "(byte" in cpp else f"{cpp} (byte {reported})")


def test_trailing_bytes_and_every_truncation_are_named_at_their_offset(tmp_path):
    data = valid_bytes(tmp_path)
    cpp, py = messages(tmp_path, data + b"\0\0")
    assert py == cpp == f"2 bytes after the last tensor (byte {len(data)})"
    for n in range(len(data)):
        cpp, py = messages(tmp_path, data[:n])
        assert py == cpp and "(byte " in py, n


def test_cpp_example_reports_a_bad_file(example, tmp_path):
    data = valid_bytes(tmp_path)
    (tmp_path / "cut.lstmx").write_bytes(data[:50])
    r = stream(example, tmp_path / "cut.lstmx", np.zeros((1, 3)))
    assert r.returncode == 1 and "truncated" in r.stderr and "cut.lstmx" in r.stderr
    r = stream(example, tmp_path / "missing.lstmx", np.zeros((1, 3)))
    assert r.returncode == 1 and "cannot open" in r.stderr
