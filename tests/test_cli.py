"""The command line end to end, with a few steps of each task."""

import subprocess
import sys

import numpy as np
import pytest

import lstm_ext
from lstm_ext import checkpoint
from lstm_ext.cli import main

SMALL = ["--steps", "3", "--hidden", "8", "--batch", "4", "--seq-len", "12", "--no-progress"]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("task", ["text", "adding", "forecast"])
def test_train_each_task(capsys, tmp_path, task):
    rc, out, err = run(capsys, "train", "--task", task, "--out", str(tmp_path), *SMALL)
    assert rc == 0, err
    ck = checkpoint.load(tmp_path / f"{task}.npz")
    assert ck.meta["task"] == task
    png = tmp_path / ("forecast.png" if task == "forecast" else f"{task}-loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in out


def test_text_prints_the_baseline_and_a_sample_then_samples_again(capsys, tmp_path):
    rc, out, _ = run(capsys, "train", "--out", str(tmp_path), *SMALL)
    assert rc == 0
    assert "unigram model of the text" in out and "bits/char on the held-out text" in out
    assert "sample (temperature 0.8):\nThe " in out
    ck = str(tmp_path / "text.npz")
    rc, out, _ = run(capsys, "sample", "--checkpoint", ck, "--length", "30", "--prime", "def ")
    assert rc == 0 and out.startswith("def ") and len(out.rstrip("\n")) >= 34
    rc, again, _ = run(capsys, "sample", "--checkpoint", ck, "--length", "30", "--prime", "def ")
    assert again == out  # the same --seed draws the same text


def test_a_fixed_seed_repeats_exactly(capsys, tmp_path):
    for d in ("a", "b"):
        argv = ["train", "--task", "adding", "--out", str(tmp_path / d), "--seed", "3", *SMALL]
        assert run(capsys, *argv)[0] == 0
    a = checkpoint.load(tmp_path / "a" / "adding.npz").model.params
    b = checkpoint.load(tmp_path / "b" / "adding.npz").model.params
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize(
    "argv, rc, words",
    [
        (["train", "--steps", "0"], 2, "--steps: expected a positive integer, got '0'"),
        (["train", "--task", "nope"], 2, "--task: invalid choice: 'nope'"),
        (["train", "--lr", "-1"], 2, "--lr: expected a positive finite number"),
        (["train", "--dtype", "float16"], 2, "--dtype: invalid choice"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        ([], 2, "the following arguments are required: command"),
        (["sample", "--checkpoint", "/nonexistent/x.npz"], 1, "no such file"),
        (["train", "--out", "/proc/lstm-ext-cannot-write", *SMALL], 1, "cannot write there"),
        (["train", "--lr", "inf"], 2, "--lr: expected a positive finite number, got 'inf'"),
        (["train", "--seed", "-1"], 2, "--seed: expected an integer >= 0, got '-1'"),
        (["sample", "--seed", "-1"], 2, "--seed: expected an integer >= 0, got '-1'"),
        # Bounded as nn.LSTM is: --layers 10000000000 had built layers until
        # memory ran out, --hidden ended in a MemoryError's traceback.
        (["train", "--layers", "10000000000"], 2, "--layers: expected an integer in [1, 1024]"),
        (["train", "--hidden", "10000000000"], 2, "--hidden: expected an integer in [1, 1048576]"),
        (
            ["train", "--task", "forecast", "--seq-len", "5000", *SMALL[:2]],
            2,
            "--seq-len: expected at most 3748",
        ),
    ],
)
def test_errors_are_one_line(capsys, argv, rc, words):
    got, _out, err = run(capsys, *argv)
    assert got == rc
    assert err.count("\n") == 1 and err.startswith("lstm-ext: error: "), err
    assert words in err


def test_sample_refuses_other_checkpoints(capsys, tmp_path):
    assert run(capsys, "train", "--task", "adding", "--out", str(tmp_path), *SMALL)[0] == 0
    rc, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path / "adding.npz"))
    assert rc == 1 and "not a character model" in err
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    rc, _, err = run(capsys, "sample", "--checkpoint", str(junk))
    assert rc == 1 and "truncated or corrupt" in err and err.count("\n") == 1


def test_sample_refuses_checkpoints_it_cannot_sample_in_one_line(capsys, tmp_path):
    """Each had ended in a traceback (AttributeError, KeyError, IndexError, TypeError)."""
    from lstm_ext import nn

    def model(lstm_dtype=np.float32):
        return nn.Sequential(nn.Embedding(3, 2), nn.LSTM(2, 4, dtype=lstm_dtype), nn.Linear(4, 3))

    cases = [
        (model(), [1, 2], "not a character model (task None)"),
        (model(), {"task": "text"}, "its meta has no vocabulary"),
        (model(), {"task": "text", "vocab": 7}, "its meta has no vocabulary"),
        (
            model(),
            {"task": "text", "vocab": "ab"},
            "its Embedding has 3 rows for a vocabulary of 2",
        ),
        (nn.LSTM(2, 4), {"task": "text", "vocab": "abc"}, "not a character model (expected a"),
        (model(np.float64), {"task": "text", "vocab": "abc"}, "its model cannot generate text"),
    ]
    for k, (m, meta, words) in enumerate(cases):
        path = tmp_path / f"{k}.npz"
        checkpoint.save(path, m, None, meta)
        rc, _, err = run(capsys, "sample", "--checkpoint", str(path), "--prime", "a")
        assert rc == 1 and words in err and err.count("\n") == 1, (k, err)


def test_info_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "lstm_ext", "info"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for words in ("lstm_ext 0.", "core: ", "BLAS: OpenBLAS", "threads: ", "CUDA path compiled: ",
                  "device='cuda' ", "recurrent product: ", "weight_dtype='bfloat16'"):  # fmt: skip
        assert words in r.stdout
    assert lstm_ext.cuda_status() in r.stdout
    r = subprocess.run([sys.executable, "-m", "lstm_ext", "train", "--help"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    for option in ("--hidden", "--layers", "--steps", "--batch", "--seq-len", "--lr", "--seed",
                   "--out", "--dtype", "--task"):  # fmt: skip
        assert option in r.stdout
