"""The command line end to end, with a few steps of each task."""

import argparse
import re
import subprocess
import sys

import numpy as np
import pytest

import lstm_ext
from lstm_ext import checkpoint, data
from lstm_ext.cli import TASKS, UsageError, check_streams, main
from lstm_ext.train import stream_chunks

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
    assert "bits/char (last 3 steps)" in out  # --steps 3: it had said "last 20"
    ck = str(tmp_path / "text.npz")
    rc, out, _ = run(capsys, "sample", "--checkpoint", ck, "--length", "30", "--prime", "def ")
    assert rc == 0 and out.startswith("def ") and len(out.rstrip("\n")) >= 34
    rc, again, _ = run(capsys, "sample", "--checkpoint", ck, "--length", "30", "--prime", "def ")
    assert again == out  # the same --seed draws the same text
    # A --prime outside the vocabulary is a bad argument, named as such; it had
    # been "text: characters not in the vocabulary", exit status 1.
    rc, _, err = run(capsys, "sample", "--checkpoint", ck, "--prime", "été")
    assert rc == 2 and err.count("\n") == 1, err
    assert f"--prime: characters not in the vocabulary: 'é' (that of checkpoint {ck})" in err
    # The run's folder for --checkpoint: "a directory", not "no such file".
    rc, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path))
    assert rc == 1 and err.count("\n") == 1, err
    assert f"checkpoint {tmp_path}: a directory, not a checkpoint file (did you mean {ck}?)" in err


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
        ([], 2, "required: {train,sample,info} ('lstm-ext --help' says more)"),
        (["train", "--steps", "0"], 2, "got '0' ('lstm-ext train --help' says more)"),
        (
            ["sample", "--checkpoint", "/nonexistent/x.npz"],
            1,
            "no such file ('lstm-ext train --task text' writes one there)",
        ),
        (["train", "--out", "/dev/null", *SMALL], 1, "--out /dev/null: a file, not a folder"),
        (["sample", "--checkpoint", "/"], 1, "checkpoint /: a directory, not a checkpoint file"),
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
        # It had been "length: expected >= 2, got 1" with exit status 1.
        (
            ["train", "--task", "adding", "--seq-len", "1", *SMALL[:2]],
            2,
            "--seq-len: expected at least 2 for --task adding",
        ),
        # These had been "tokens: 418613 are too few for batch=32 streams of
        # seq_len=1000000", exit status 1 (test_text_sizes checks the numbers).
        (["train", "--seq-len", "1000000"], 2, "--seq-len: expected at most "),
        (["train", "--batch", "1000000"], 2, "--batch: expected at most "),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, rc, words):
    monkeypatch.chdir(tmp_path)  # --out's default, ./lstm-ext-runs, is made here
    got, _out, err = run(capsys, *argv)
    assert got == rc
    assert err.count("\n") == 1 and err.startswith("lstm-ext: error: "), err
    assert words in err
    assert list(tmp_path.iterdir()) == []  # no empty --out folder left behind


def test_text_sizes_name_the_option_and_the_largest_value(capsys, tmp_path):
    """The largest --seq-len and --batch that check_streams lets through are
    those stream_chunks takes; the command line names them (exit status 2)."""
    n = int(0.9 * len(data.pydoc_text()))  # the training characters
    cfg = dict(TASKS["text"])
    B, T = cfg["batch"], cfg["seq_len"]
    given = argparse.Namespace(seq_len=n // B, batch=None)  # --seq-len alone given
    for seq_len, batch in [(n // B - 1, B), (T, n // (T + 1))]:
        sizes = dict(cfg, seq_len=seq_len, batch=batch)
        check_streams(n, given, sizes)
        assert len(stream_chunks(np.zeros(n), batch, seq_len)) == 1
        with pytest.raises(ValueError, match="too few"):
            stream_chunks(np.zeros(n), batch, seq_len + 1)
        with pytest.raises(ValueError, match="too few"):
            stream_chunks(np.zeros(n), batch + 1, seq_len)
    out = str(tmp_path / "run")
    for argv, words in [
        (["--seq-len", str(n // B)], f"--seq-len: expected at most {n // B - 1} for --batch {B} "),
        (["--batch", str(n // (T + 1) + 1)], f"--batch: expected at most {n // (T + 1)} for "),
        (["--batch", "1000000", "--seq-len", "1000000"], f"--seq-len: expected at most {n - 1}"),
    ]:
        rc, stdout, err = run(capsys, "train", "--out", out, *argv)
        assert rc == 2 and words in err and f"({n} training characters)" in err, err
        assert stdout == ""  # refused before any work
    with pytest.raises(UsageError, match="--seq-len: expected at most"):
        check_streams(n, given, dict(cfg, seq_len=n // B))


def test_a_failed_run_removes_only_the_folders_it_made(capsys, tmp_path):
    bad = ["--task", "adding", "--seq-len", "1"]
    rc, _, err = run(capsys, "train", "--out", str(tmp_path / "a" / "b" / "c"), *bad)
    assert rc == 2, err
    assert list(tmp_path.iterdir()) == []  # a, a/b and a/b/c made by the run, removed
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    for existing in ("empty", "full"):
        rc, _, err = run(capsys, "train", "--out", str(tmp_path / existing), *bad)
        assert rc == 2, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    # a path through ".." (b is never made), and a folder whose name is too
    # long to make (new is made, then the long one fails): nothing left
    for out in (tmp_path / "b" / ".." / "c", tmp_path / "new" / ("x" * 300)):
        rc, _, err = run(capsys, "train", "--out", str(out), *bad)
        assert rc != 0, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"], out


RUN = ["--steps", "8", "--eval-every", "4", "--hidden", "8", "--batch", "4", "--seq-len", "12",
       "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("task", ["adding", "forecast"])
def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(capsys, tmp_path, monkeypatch,
                                                                task):  # fmt: skip
    """The checkpoint written at step 4 of 8, resumed, gives the weights of
    the run that went on, bit for bit (the same batches by step, the
    optimiser's moments and schedule restored), and the whole history."""
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    save = checkpoint.save

    def save_and_keep_step_4(path, model, optimizer=None, meta=None, arrays=None):
        save(path, model, optimizer, meta, arrays)
        if meta.get("steps_done") == 4:
            save(b / path.name, model, optimizer, meta, arrays)

    monkeypatch.setattr(checkpoint, "save", save_and_keep_step_4)
    assert run(capsys, "train", "--task", task, "--out", str(a), *RUN)[0] == 0
    monkeypatch.setattr(checkpoint, "save", save)
    rc, out, err = run(capsys, "train", "--task", task, "--out", str(b), *RUN, "--resume")
    assert rc == 0, err
    assert f"resuming from {b / f'{task}.npz'}: step 4 of 8" in out
    ck_a, ck_b = (checkpoint.load(d / f"{task}.npz") for d in (a, b))
    for k, v in ck_a.model.params.items():
        np.testing.assert_array_equal(ck_b.model.params[k], v, err_msg=k)
    steps_a, steps_b = (ck.arrays["history.steps"] for ck in (ck_a, ck_b))
    assert steps_b.tolist() == list(range(8)) == steps_a.tolist()
    np.testing.assert_array_equal(ck_b.arrays["history.loss"], ck_a.arrays["history.loss"])


def test_resume_refuses_what_it_cannot_continue(capsys, tmp_path):
    out = ["--task", "adding", "--out", str(tmp_path)]
    rc, _, err = run(capsys, "train", *out, *RUN, "--resume")
    assert rc == 2 and f"--resume: no checkpoint {tmp_path / 'adding.npz'} to continue" in err
    assert run(capsys, "train", *out, *RUN)[0] == 0
    rc, stdout, _ = run(capsys, "train", *out, *RUN)  # a new run over it: said at the start
    assert rc == 0 and f"note: this new run replaces {tmp_path / 'adding.npz'}" in stdout
    (tmp_path / "adding-loss.png").unlink()
    rc, stdout, err = run(capsys, "train", *out, *RUN, "--resume")  # finished: the outputs again
    assert rc == 0 and "all 8 steps done" in stdout and "test MSE" in stdout, err
    assert (tmp_path / "adding-loss.png").exists()
    rc, _, err = run(capsys, "train", *out, *RUN, "--resume", "--hidden", "9", "--lr", "0.1")
    assert rc == 2 and err.count("\n") == 1, err
    assert "is of a run with --hidden 8 --lr 0.01; this one has --hidden 9 --lr 0.1" in err
    rc, _, err = run(capsys, "train", "--out", str(tmp_path), *RUN, "--resume")  # --task text
    assert rc == 2 and "text.npz to continue" in err and "it holds adding.npz: --task?" in err
    # Checkpoints it cannot continue: one line, exit status 1. One that records
    # no run (saved by checkpoint.save alone); one whose records disagree.
    path = tmp_path / "adding.npz"
    ck = checkpoint.load(path)
    good = dict(meta=ck.meta, arrays=ck.arrays, opt=ck.optimizer_state)
    checkpoint.save(path, ck.model, None, {"steps_done": 4})
    rc, _, err = run(capsys, "train", *out, *RUN, "--resume")
    assert rc == 1 and err.count("\n") == 1 and "records no run to resume" in err, err

    class Opt:  # an optimiser's state_dict, as given
        def __init__(self, state):
            self.state = state

        def state_dict(self):
            return self.state

    half = dict(good["meta"], steps_done=4)
    first = good["arrays"]["history.eval_steps"] < 4  # the evaluation at step 3
    history = {k: v[:4] if k in ("history.steps", "history.loss", "history.items_per_s")
               else v[first] for k, v in good["arrays"].items()}  # fmt: skip
    no_eval = {k: v[:0] if "eval" in k else v for k, v in history.items()}
    for meta, arrays, opt, words in [
        (dict(good["meta"], steps_done=True), good["arrays"], good["opt"], "steps_done True"),
        (half, good["arrays"], good["opt"], "history does not match its 4 steps"),
        (half, no_eval, good["opt"], "history does not match its 4 steps"),
        (half, history, good["opt"], "optimiser state has taken 8 steps, not 4"),
        (half, history, dict(good["opt"], steps=np.array(np.inf)), "has taken inf steps"),
        (half, {}, good["opt"], "history is missing"),
    ]:
        checkpoint.save(path, ck.model, Opt(opt), meta, arrays)
        rc, _, err = run(capsys, "train", *out, *RUN, "--resume")
        assert rc == 1 and err.count("\n") == 1 and words in err, (words, err)
    odd = dict(good["meta"]["settings"], clip="1\nfake line")  # shown on one line
    checkpoint.save(path, ck.model, Opt(good["opt"]), dict(half, settings=odd), history)
    rc, _, err = run(capsys, "train", *out, *RUN, "--resume")
    assert rc == 2 and err.count("\n") == 1 and "clip='1\\nfake line'" in err, err
    checkpoint.save(path, ck.model, Opt(dict(good["opt"], steps=np.array(4))), half, history)
    rc, stdout, err = run(capsys, "train", *out, *RUN, "--resume")  # consistent: it goes on
    assert rc == 0 and "step 4 of 8" in stdout, err


def test_a_run_that_diverges_says_so_in_one_line(capsys, tmp_path):
    argv = ["train", "--task", "adding", "--out", str(tmp_path), *SMALL, "--lr", "1e30"]
    rc, _, err = run(capsys, *argv)
    assert rc == 1 and err.count("\n") == 1, err
    assert "training loss is " in err and "the run diverged (a smaller --lr may help);" in err
    assert "no checkpoint saved" in err or "adding.npz holds step " in err


def test_the_text_task_resumes_from_zero_state(capsys, tmp_path, monkeypatch):
    """The text task resumes too (the state it carries between chunks starts
    from zeros there, so its weights are not the uninterrupted run's)."""
    save = checkpoint.save

    def save_until_step_4(path, model, optimizer=None, meta=None, arrays=None):
        if meta.get("steps_done") <= 4:
            save(path, model, optimizer, meta, arrays)

    monkeypatch.setattr(checkpoint, "save", save_until_step_4)
    out = ["--out", str(tmp_path), *RUN]
    assert run(capsys, "train", *out)[0] == 0
    monkeypatch.setattr(checkpoint, "save", save)
    assert checkpoint.load(tmp_path / "text.npz").meta["steps_done"] == 4
    rc, stdout, err = run(capsys, "train", *out, "--resume")
    assert rc == 0 and "step 4 of 8" in stdout, err
    assert checkpoint.load(tmp_path / "text.npz").meta["steps_done"] == 8


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
        (model(), [1, 2], "its meta has no vocabulary"),
        (
            model(),
            {"task": "adding", "vocab": "abc"},
            "not a character model (written by 'train --task adding')",
        ),
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
    # the README's checkpoint.save(..., meta={"vocab": ...}) names no task: sampled
    path = tmp_path / "api.npz"
    checkpoint.save(path, model(), None, {"vocab": "abc"})
    rc, out, err = run(capsys, "sample", "--checkpoint", str(path), "--prime", "a", "--length", "5")
    assert rc == 0 and len(out) == len("a") + 5 + 1 and set(out[:-1]) <= set("abc"), (out, err)


def help_of(capsys, *argv):
    """{option: its help text, unwrapped} from ``lstm-ext ARGV --help``, and
    the text before the options, unwrapped (any terminal width)."""
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = capsys.readouterr().out
    head, options = text.split("\noptions:\n")  # "options:" since Python 3.10
    blocks = re.split(r"\n  (?=-)", options)
    return {b.split()[0].rstrip(","): " ".join(b.split()[1:]) for b in blocks}, " ".join(
        head.split()
    )


def test_help_gives_every_default(capsys):
    for command in ("train", "sample"):
        helps, _ = help_of(capsys, command)
        for option, text in helps.items():
            assert option == "-h" or "default" in text, (command, option, text)
    helps, _ = help_of(capsys, "train")
    assert "(default 256 for text, 64 for adding and forecast)" in helps["--hidden"]
    assert "(default 64 for text, 100 for adding and forecast)" in helps["--seq-len"]
    assert "(default 0.003 for text, 0.01 for adding, 0.005 for forecast)" in helps["--lr"]
    for option in ("--steps", "--batch", "--eval-every"):
        assert "for text" in helps[option], helps[option]
    assert "(default float32)" in helps["--dtype"]
    assert "(default 400)" in help_of(capsys, "sample")[0]["--length"]
    _, head = help_of(capsys)  # plain text, not the docstring's ``markup``
    assert "The command line: lstm-ext train | sample | info (also python -m lstm_ext)." in head
    assert "``" not in head


def test_info_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "lstm_ext", "info"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for words in ("lstm_ext 0.", "core: ", "BLAS: OpenBLAS", "threads: ", "CUDA path compiled: ",
                  "device='cuda' ", "recurrent product: ", "weight_dtype='bfloat16'",
                  "gate pass: the exps' multiply-adds "):  # fmt: skip
        assert words in r.stdout
    assert lstm_ext.cuda_status() in r.stdout
    r = subprocess.run([sys.executable, "-m", "lstm_ext", "train", "--help"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    for option in ("--hidden", "--layers", "--steps", "--batch", "--seq-len", "--lr", "--seed",
                   "--out", "--dtype", "--task"):  # fmt: skip
        assert option in r.stdout
