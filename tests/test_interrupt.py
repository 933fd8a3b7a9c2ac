"""Ctrl-C during ``lstm-ext train``: a clean stop between steps, exit status
130, no traceback, and the checkpoint on disk whole and loadable.

The command line runs as a real process (``python -m lstm_ext train``, a
tiny adding problem that checkpoints at every evaluation) that gets SIGINT
once, or a flood of them while it saves a checkpoint at every step. The
save itself is checked in-process: signals arriving during a save wait for
it to finish, and an exception in the middle of one leaves the old file.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lstm_ext import checkpoint, cli, nn

TINY = [
    "train",
    "--task",
    "adding",
    "--hidden",
    "4",
    "--batch",
    "2",
    "--seq-len",
    "5",
    "--steps",
    "1000000",
    "--no-progress",
]


def start(out, eval_every):
    return subprocess.Popen(
        [sys.executable, "-m", "lstm_ext", *TINY, "--eval-every", str(eval_every), "--out", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path, proc, timeout=60):
    """Poll until `path` exists (the first checkpoint is written)."""
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"exited early: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, f"no {path} after {timeout} s"
        time.sleep(0.02)


def finish(proc):
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out, err


def check_directory(out):
    """One checkpoint, whole, and no temporary file left beside it."""
    assert sorted(p.name for p in out.iterdir()) == ["adding.npz"]
    ck = checkpoint.load(out / "adding.npz")
    assert ck.meta["task"] == "adding" and ck.meta["steps_done"] >= 1
    assert all(np.all(np.isfinite(p)) for p in ck.model.params.values())
    return ck


def test_one_ctrl_c_stops_between_steps(tmp_path):
    out = tmp_path / "run"
    proc = start(str(out), eval_every=20)
    try:
        wait_for(out / "adding.npz", proc)
        time.sleep(0.2)  # into the steps after the first checkpoint
        proc.send_signal(signal.SIGINT)
        rc, stdout, stderr = finish(proc)
    finally:
        proc.kill()
    assert rc == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted: stopping after this step" in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lstm-ext: interrupted: stopped after step "), last
    assert "adding.npz holds step " in last, last
    ck = check_directory(out)
    held = int(last.rsplit("holds step ", 1)[1].split()[0])
    assert last.endswith(f"holds step {held} (--resume continues from it)"), last
    assert ck.meta["steps_done"] == held and held % 20 == 0  # an evaluation's checkpoint
    assert "wrote" not in stdout  # the run did not go on to its final outputs


def test_a_flood_of_ctrl_c_during_saves_leaves_a_whole_checkpoint(tmp_path):
    """A checkpoint at every step, so most signals land during or near a
    save: the first asks to stop, the next ones stop at once, but never in
    the middle of a save."""
    out = tmp_path / "run"
    proc = start(str(out), eval_every=1)
    try:
        wait_for(out / "adding.npz", proc)
        for _ in range(500):
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGINT)
            time.sleep(0.001)
        rc, _, stderr = finish(proc)
    finally:
        proc.kill()
    assert rc == 130, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lstm-ext: interrupted: stopped "), stderr
    ck = check_directory(out)
    held = f"adding.npz holds step {ck.meta['steps_done']} (--resume continues from it)"
    assert last.endswith(held), last


# ---- in-process: the save ---------------------------------------------------------


@pytest.fixture
def restore_sigint():
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


def model(seed):
    return nn.Sequential(nn.LSTM(2, 3, seed=seed), nn.Linear(3, 1, seed=seed))


def test_signals_during_a_save_wait_for_it(tmp_path, monkeypatch, restore_sigint):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model(0), None, {"n": 0})
    savez = np.savez

    def savez_interrupted(f, **arrays):  # two Ctrl-C in the middle of writing
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        savez(f, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", savez_interrupted)
    sigint = cli._Sigint()
    with pytest.raises(KeyboardInterrupt):  # raised once the save is done, not before
        with sigint, sigint.uninterrupted():
            checkpoint.save(path, model(1), None, {"n": 1})
    assert sigint.count == 2
    assert checkpoint.load(path).meta == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_an_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    old = model(0)
    checkpoint.save(path, old, None, {"n": 0})
    savez = np.savez

    def savez_cut_short(f, **arrays):  # half a file, then Ctrl-C
        savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.np, "savez", savez_cut_short)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, model(1), None, {"n": 1})
    ck = checkpoint.load(path)
    assert ck.meta == {"n": 0}
    for name, p in old.params.items():
        np.testing.assert_array_equal(ck.model.params[name], p)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_fit_stops_between_steps_when_asked(rng):
    """fit's stop() is asked after each whole step; Interrupted says how many."""
    from lstm_ext import losses, optim
    from lstm_ext.train import Interrupted, fit

    m = model(0)
    x, y = rng.standard_normal((4, 2, 2)).astype(np.float32), np.zeros((2, 1), np.float32)
    seen = []

    def step_fn(mod, batch):
        out, _ = mod(batch)
        loss, g = losses.mse(out[-1], y)
        dout = np.zeros_like(out)
        dout[-1] = g
        mod.backward(dout)
        return loss, 1

    with pytest.raises(Interrupted) as e:
        fit(
            m,
            optim.Adam(m, lr=1e-3),
            lambda step: x,
            step_fn,
            100,
            eval_fn=lambda mod: 0.0,
            eval_every=2,
            progress=False,
            after_eval=lambda done, loss: seen.append(done),
            stop=lambda: len(seen) == 3,
        )
    assert e.value.steps_done == 6 and seen == [2, 4, 6]
    assert len(e.value.history.loss) == 6
    assert isinstance(e.value, KeyboardInterrupt)
