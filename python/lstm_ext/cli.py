"""The command line: ``lstm-ext train | sample | info`` (also ``python -m lstm_ext``).

``lstm-ext train`` with no arguments is the main job: a character-level
language model of the documentation text every Python ships
(``pydoc_data.topics``). ``--task adding`` is Hochreiter & Schmidhuber's
adding problem, ``--task forecast`` a time-series forecast. Every run with
the same ``--seed`` repeats exactly on the same Python (the text task trains
on that Python's own text).

Training saves its checkpoint at every evaluation (atomically: a file is
either the old one or the new one, whole), with the optimiser's state, the
run's settings and its history. Ctrl-C (SIGINT) stops it after the step
under way, saves nothing more and exits with status 130; the checkpoint on
disk is the last one completed. A second Ctrl-C stops at once, except during
a save, which it lets finish first. ``--resume`` continues the run from that
checkpoint: the same settings and batches, so an adding or forecast run
resumed ends with the weights an uninterrupted one has, bit for bit (the
text task's state carried from chunk to chunk starts from zeros there).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import math
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from . import checkpoint, data, losses, nn, optim
from ._checks import check_int
from ._version import __version__
from .train import History, Interrupted, TruncatedBPTT, fit, generate, stream_chunks

TASKS = {  # defaults per task; the command line overrides any of them
    "text": dict(hidden=256, layers=1, steps=600, batch=32, seq_len=64, lr=3e-3,
                 eval_every=100, clip=5.0, embed=48),
    "adding": dict(hidden=64, layers=1, steps=1500, batch=64, seq_len=100, lr=1e-2,
                   eval_every=250, clip=1.0, embed=0),
    "forecast": dict(hidden=64, layers=1, steps=1500, batch=32, seq_len=100, lr=5e-3,
                     eval_every=250, clip=1.0, embed=0),
}  # fmt: skip


class UsageError(Exception):
    """Bad arguments: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, where to read more
        raise UsageError(f"{message} ('{self.prog} --help' says more)")


def int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (no upper bound where hi is None)."""
    what = (f"an integer in [{lo}, {hi}]" if hi is not None
            else "a positive integer" if lo == 1 else f"an integer >= {lo}")  # fmt: skip

    def parse(text):
        try:
            return check_int("", int(text), lo, hi)
        except ValueError:  # not an integer, or out of range
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


positive_int = int_in(1)


def positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


class _PrintAndExit(argparse.Action):
    """--cmake-dir, --cmake-prefix-path, --include-dir: print lstm_ext.<what>()
    and exit, as --version does."""

    def __init__(self, option_strings, dest, what, help=None):
        super().__init__(option_strings, dest, nargs=0, help=help)
        self.what = what

    def __call__(self, parser, namespace, values, option_string=None):
        import lstm_ext

        print(getattr(lstm_ext, self.what)())
        parser.exit()


def task_defaults(key: str) -> str:
    """For --help: a setting's default in TASKS, "default 1" where every task
    has the same, else "default 256 for text, 64 for adding and forecast"."""
    tasks = {}  # value -> the tasks with it
    for task, cfg in TASKS.items():
        tasks.setdefault(f"{cfg[key]:g}", []).append(task)
    if len(tasks) == 1:
        return f"default {next(iter(tasks))}"
    return "default " + ", ".join(f"{v} for {' and '.join(ts)}" for v, ts in tasks.items())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lstm-ext", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--version", action="version", version=f"lstm-ext {__version__}")
    p.add_argument(
        "--cmake-dir",
        action=_PrintAndExit,
        what="get_cmake_dir",
        help="print the folder of the CMake package (find_package(lstm_ext)) and exit",
    )
    p.add_argument("--cmake-prefix-path", action=_PrintAndExit, what="get_cmake_prefix_path",
                   help="print CMAKE_PREFIX_PATH for find_package(lstm_ext): its folder and "
                   "OpenBLAS's, ';'-separated, and exit")  # fmt: skip
    p.add_argument("--include-dir", action=_PrintAndExit, what="get_include",
                   help="print the folder of the C++ headers and exit")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: the character language model)")
    t.add_argument(
        "--task",
        choices=list(TASKS),
        default="text",
        help="text: character LM on pydoc_data.topics (default); adding: the adding "
        "problem; forecast: a univariate time series",
    )
    t.add_argument(
        "--hidden",
        type=int_in(*nn.LSTM_LIMITS["hidden_size"]),
        help=f"hidden units per LSTM layer ({task_defaults('hidden')})",
    )
    t.add_argument(
        "--layers",
        type=int_in(*nn.LSTM_LIMITS["num_layers"]),
        help=f"stacked LSTM layers ({task_defaults('layers')})",
    )
    t.add_argument("--steps", type=positive_int,
                   help=f"optimiser steps ({task_defaults('steps')})")  # fmt: skip
    t.add_argument("--batch", type=positive_int,
                   help=f"sequences per step ({task_defaults('batch')})")  # fmt: skip
    t.add_argument(
        "--seq-len",
        type=positive_int,
        help="steps per sequence: the BPTT chunk for text, the sequence length for adding "
        f"(at least 2), the window for forecast ({task_defaults('seq_len')})",
    )
    t.add_argument("--lr", type=positive_float,
                   help=f"Adam's learning rate, cosine decay ({task_defaults('lr')})")  # fmt: skip
    t.add_argument("--seed", type=int_in(0), default=0, help="seed of weights and data (default 0)")
    t.add_argument(
        "--out",
        type=Path,
        default=Path("lstm-ext-runs"),
        help="folder for the checkpoint and plots (default ./lstm-ext-runs)",
    )
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the floating-point type of the weights and the arithmetic "
                   "(default float32)")  # fmt: skip
    t.add_argument("--eval-every", type=positive_int,
                   help=f"steps between evaluations and checkpoints "
                   f"({task_defaults('eval_every')})")  # fmt: skip
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: one on stderr)")  # fmt: skip
    t.add_argument("--resume", action="store_true",
                   help="continue the run whose checkpoint is in --out (TASK.npz) from the "
                   "step it holds; give the same options (default: a new run)")  # fmt: skip

    s = sub.add_parser("sample", help="generate text from a trained character model")
    s.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("lstm-ext-runs/text.npz"),
        help="a character model's checkpoint, as 'train --task text' writes it (or "
        "checkpoint.save with meta={'vocab': the characters}; default ./lstm-ext-runs/text.npz)",
    )
    s.add_argument("--length", type=positive_int, default=400,
                   help="characters to generate (default 400)")  # fmt: skip
    s.add_argument(
        "--temperature",
        type=positive_float,
        default=0.8,
        help="below 1: safer; above 1: wilder (default 0.8)",
    )
    s.add_argument("--prime", default="The ", help="text to start from (default 'The ')")
    s.add_argument("--seed", type=int_in(0), default=0, help="sampling seed (default 0)")

    sub.add_parser("info", help="version, build, BLAS and threads, CUDA")
    # No command: "required: {train,sample,info}" (argparse names it by its metavar).
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return p  # fmt: skip


# ---- shared pieces ------------------------------------------------------------


def settings(args) -> dict:
    """The task's defaults, overridden by what was given."""
    cfg = dict(TASKS[args.task])
    for k in cfg:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    return cfg


def out_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():  # mkdir's own word was "File exists"
        raise OSError(f"--out {path}: a file, not a folder (--out names the run's folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".lstm-ext-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"--out {path}: cannot write there ({e.strerror or e})") from None
    return path


@contextlib.contextmanager
def removed_if_left_empty(path: Path):
    """On an exception (bad arguments found by a task, Ctrl-C before the first
    checkpoint), remove the folders of ``path`` that the block created and left
    empty, the deepest first; one that existed before, or holds anything, stays."""
    path = Path(os.path.abspath(path))
    new = []  # path and its parents up to the first that exists
    for p in (path, *path.parents):
        if os.path.lexists(p):
            break
        new.append(p)
    try:
        yield
    except BaseException:
        for p in new:
            if not os.path.lexists(p):  # not made (the run failed first): those above may be
                continue
            try:
                p.rmdir()
            except OSError:  # not empty, or not ours to remove: it and those above stay
                break
        raise


def forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Start every forget gate at bias `value` (split as PyTorch's two biases:
    all in bias_ih, none in bias_hh), so that the cell remembers from the
    first step; Jozefowicz et al. (2015) found 1 a good start."""
    H = lstm.hidden_size
    for name, p in lstm.params.items():
        if name.startswith("bias_"):
            p[H : 2 * H] = value if name.startswith("bias_ih") else 0.0


def adam(model, cfg):
    return optim.Adam(model, lr=cfg["lr"], schedule=optim.warmup_cosine(cfg["steps"], final=0.1))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed),
    imported on first use: it is slow to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(path: Path, title: str, ylabel: str, curves, hline=None, logy=False):
    """A PNG of (label, x, y) curves."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, x, y in curves:
        ax.plot(x, y, label=label)
    if hline is not None:
        ax.axhline(hline[1], color="gray", linestyle="--", label=hline[0])
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def loss_curves(history, train_label="training", eval_label="held-out", window=20):
    sm = history.smoothed(window)
    x = history.steps[len(history.steps) - len(sm) :]
    return [(train_label + f" (mean of {window})" if len(sm) < len(history.loss) else train_label,
             x, sm), (eval_label, history.eval_steps, history.eval_loss)]  # fmt: skip


class _Sigint:
    """Ctrl-C while training: the first SIGINT asks ``fit`` to stop after the
    step under way (``fit``'s ``stop``); a second raises KeyboardInterrupt at
    once, unless a checkpoint is being saved, where it waits for the save to
    finish. Installed only in the main thread (Python runs signal handlers
    there); the previous handler comes back when training ends, and after an
    interrupt SIGINT stays ignored until ``main`` returns."""

    def __init__(self):
        self.count = 0
        self.saving = False
        self.raised = False  # a KeyboardInterrupt is on its way: more would only get in its way
        self._previous = None  # the handler replaced; None: not installed (not the main thread)

    def __call__(self) -> bool:
        # True: fit raises Interrupted now. A later Ctrl-C must not raise a
        # bare KeyboardInterrupt over it (in cmd_train's handler of it, that
        # one escaped without saying where training stopped: seen once in
        # test_a_flood_of_ctrl_c_during_saves_leaves_a_whole_checkpoint).
        if self.count > 0:
            self.raised = True
        return self.count > 0

    def _handler(self, signum, frame):
        self.count += 1
        if self.count == 1:  # os.write: no buffered stream to re-enter from a handler
            os.write(2, b"\nlstm-ext: interrupted: stopping after this step "
                        b"(Ctrl-C again to stop now)\n")  # fmt: skip
        elif not self.saving and not self.raised:
            self.raised = True
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler) or signal.SIG_DFL
        return self

    def __exit__(self, exc_type, *exc):
        if self._previous is not None:
            interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
            if interrupted:  # main restores the handler it found, where it should
                _ignore_sigint()
            else:
                signal.signal(signal.SIGINT, self._previous)

    @contextlib.contextmanager
    def uninterrupted(self):
        self.saving = True
        try:
            yield
        finally:
            self.saving = False
        if self.count > 1 and not self.raised:
            self.raised = True
            raise KeyboardInterrupt


def run_settings(args, cfg, data: str | None = None) -> dict:
    """What makes a run's steps what they are, as a checkpoint records it
    for ``--resume``: the task, dtype, seed and the task's settings (all but
    eval_every, which changes only when checkpoints are written), and a
    digest of data that does not come from the seed (the text task's)."""
    keep = {k: v for k, v in cfg.items() if k != "eval_every"}
    return dict(task=args.task, dtype=args.dtype, seed=args.seed, data=data, **keep)


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_HISTORY = tuple(f.name for f in dataclasses.fields(History))


def history_arrays(history: History) -> dict:
    """A checkpoint's arrays for the history (arrays: the JSON metadata would
    grow with every step, and each save with it)."""
    return {f"history.{k}": np.asarray(getattr(history, k), np.float64) for k in _HISTORY}


def history_of(ck, done: int) -> History:
    """The history saved with ``history_arrays``, checked against the
    ``done`` steps the checkpoint holds; CheckpointError otherwise."""
    a = {k: ck.arrays.get(f"history.{k}") for k in _HISTORY}
    if any(v is None or v.ndim != 1 or v.dtype.kind not in "iuf" for v in a.values()):
        raise ValueError("its history is missing or not 1-D numbers")
    steps, evals = a["steps"], a["eval_steps"]
    # A checkpoint is written right after an evaluation: the last at step done - 1.
    if not (np.array_equal(steps, np.arange(done)) and len(a["loss"]) == len(a["items_per_s"])
            == done and len(evals) == len(a["eval_loss"]) and len(evals) > 0
            and np.all(np.diff(evals) > 0) and evals[0] >= 0 and evals[-1] == done - 1
            and np.all(evals == np.round(evals))):  # fmt: skip
        raise ValueError(f"its history does not match its {done} steps")
    ints = ("steps", "eval_steps")
    return History(**{k: [int(x) if k in ints else float(x) for x in v] for k, v in a.items()})


def _brief(v) -> str:
    """A setting's value from a file for a one-line message."""
    text = str(v) if isinstance(v, (int, float, str)) else repr(v)
    return text if text.isprintable() and len(text) <= 40 else repr(text[:40]) + "..."


def resumed(ckpt: Path, model, optimizer, settings: dict, options) -> tuple[int, History]:
    """Loads the run's checkpoint into ``model`` and ``optimizer`` for
    ``--resume``: returns the steps it holds and its history (``options``:
    the settings given as options, named so). UsageError where
    it is of another run; CheckpointError where it is not one ``--resume``
    can continue. A finished run's: its model, and nothing left to train
    (the outputs are written again)."""
    if not ckpt.exists():
        others = sorted(f"{t}.npz" for t in TASKS if (ckpt.parent / f"{t}.npz").exists())
        hint = f"; it holds {', '.join(others)}: --task?" if others else ""
        raise UsageError(f"--resume: no checkpoint {ckpt} to continue (--out names the run's "
                         f"folder{hint})")  # fmt: skip
    ck = checkpoint.load(ckpt)
    meta = ck.meta if isinstance(ck.meta, dict) else {}
    saved = meta.get("settings")
    if not isinstance(saved, dict):
        raise checkpoint.CheckpointError(f"checkpoint {ckpt}: records no run to resume (written "
                                         "before lstm-ext train had --resume?)")  # fmt: skip
    if settings["task"] == "text" == saved.get("task") and saved.get("data") != settings["data"]:
        raise UsageError(f"--resume: {ckpt} was trained on another text (another Python's "
                         "pydoc_data.topics)")  # fmt: skip
    differ = sorted(k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k))
    if differ:  # as options (--hidden 8) where they are options (not clip, embed)
        theirs, ours = (" ".join(f"--{k.replace('_', '-')} {_brief(d.get(k))}" if k in options
                                 else f"{k}={_brief(d.get(k))}" for k in differ)
                        for d in (saved, settings))  # fmt: skip
        raise UsageError(f"--resume: {ckpt} is of a run with {theirs}; this one has {ours} "
                         "(give the options that run had)")  # fmt: skip
    done, steps = meta.get("steps_done"), settings["steps"]
    try:
        if type(done) is not int or not 0 < done <= steps:
            raise ValueError(f"steps_done {done!r} is not a step of this run's {steps}")
        history = history_of(ck, done)
        model.load_state_dict(ck.model.params)
        checkpoint.copy_rng_states(model, ck.model)
        if done < steps:
            taken = np.asarray(ck.optimizer_state.get("steps", np.nan))
            if taken.ndim != 0 or taken.dtype.kind not in "iu" or int(taken) != done:
                took = _brief(taken.item() if taken.ndim == 0 else taken)
                raise ValueError(f"its optimiser state has taken {took} steps, not {done}")
            optimizer.load_state_dict(ck.optimizer_state)
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        why = f"checkpoint {ckpt}: cannot resume from it ({e})"
        raise checkpoint.CheckpointError(why) from None
    left = f"step {done} of {steps}" if done < steps else f"all {steps} steps done"
    print(f"resuming from {ckpt}: {left}")
    return done, history


def fit_and_save(args, cfg, model, ckpt: Path, meta, optimizer, batches, step_fn, data=None,
                 **fit_kwargs):  # fmt: skip
    """``fit`` of ``cfg["steps"]`` steps (from the checkpoint's with
    ``--resume``), saving a checkpoint to ``ckpt`` after every evaluation,
    with ``meta(eval_loss)``, the steps done and the run's settings (``data``:
    run_settings') as its metadata, the optimiser's state and the history;
    stopping cleanly on Ctrl-C (see the module docstring)."""
    settings = run_settings(args, cfg, data)
    start, history = 0, History()
    if args.resume:
        start, history = resumed(ckpt, model, optimizer, settings, vars(args))
        if start == cfg["steps"]:
            return history
    elif ckpt.exists():
        print(f"note: this new run replaces {ckpt} at its first evaluation (--resume would "
              "continue the run it holds)")  # fmt: skip
    sigint, saved = _Sigint(), [start]

    def after_eval(done, loss):
        if not math.isfinite(loss):  # keep the last good checkpoint
            return
        with sigint.uninterrupted():
            checkpoint.save(ckpt, model, optimizer,
                            dict(meta(loss), steps_done=start + done, settings=settings),
                            history_arrays(history))  # fmt: skip
            saved[0] = start + done

    with sigint:
        try:
            return fit(model, optimizer, batches, step_fn, cfg["steps"] - start, start=start,
                       eval_every=cfg["eval_every"], clip=cfg["clip"], history=history,
                       progress=not args.no_progress, after_eval=after_eval, stop=sigint,
                       **fit_kwargs)  # fmt: skip
        except KeyboardInterrupt as e:  # Interrupted: between steps; else a second Ctrl-C
            when = (f"after step {start + e.steps_done} of {cfg['steps']}"
                    if isinstance(e, Interrupted) else "in the middle of a step")  # fmt: skip
            last = (f"{ckpt} holds step {saved[0]} (--resume continues from it)" if saved[0]
                    else "no checkpoint saved yet")  # fmt: skip
            raise KeyboardInterrupt(f"stopped {when}; {last}") from None
        except FloatingPointError as e:  # fit's: the training loss became inf or NaN
            last = f"{ckpt} holds step {saved[0]}" if saved[0] else "no checkpoint saved"
            raise FloatingPointError(f"{e}: the run diverged (a smaller --lr may help); "
                                     f"{last}") from None  # fmt: skip


# ---- the tasks -----------------------------------------------------------------


def check_streams(n: int, args, cfg) -> None:
    """UsageError unless n training characters make at least one chunk of
    ``stream_chunks``: ``batch`` streams of n // batch characters, each
    holding ``seq_len`` inputs and the next character. It names --batch where
    --batch alone was given, or where no --seq-len would do; else --seq-len."""
    B, T = cfg["batch"], cfg["seq_len"]
    if B * (T + 1) <= n:
        return
    data_size = f"({n} training characters)"
    if n // B >= 2 and (args.seq_len is not None or args.batch is None):
        raise UsageError(f"--seq-len: expected at most {n // B - 1} for --batch {B} "
                         f"{data_size}, got {T}")  # fmt: skip
    if n // (T + 1) >= 1:
        raise UsageError(f"--batch: expected at most {n // (T + 1)} for --seq-len {T} "
                         f"{data_size}, got {B}")  # fmt: skip
    raise UsageError(f"--seq-len: expected at most {n - 1}, with --batch 1 {data_size}, got {T}")


def train_text(args, cfg) -> None:
    text = data.pydoc_text()
    vocab = data.Vocab(text)
    ids = vocab.encode(text)
    split = int(0.9 * len(ids))
    train_ids, held = ids[:split], ids[split:]
    check_streams(len(train_ids), args, cfg)
    V, dtype = len(vocab), args.dtype
    model = nn.Sequential(
        nn.Embedding(V, cfg["embed"], dtype=dtype, seed=args.seed),
        nn.LSTM(cfg["embed"], cfg["hidden"], cfg["layers"], dtype=dtype, seed=args.seed + 1),
        nn.Linear(cfg["hidden"], V, dtype=dtype, seed=args.seed + 2),
    )
    unigram = data.unigram_bits(train_ids, held, V)
    print(f"pydoc_data.topics: {len(ids):,} characters, {V} distinct; "
          f"{len(train_ids):,} to train on, {len(held):,} held out")  # fmt: skip
    print(f"model: {model.num_parameters():,} parameters; unigram model of the text: "
          f"{unigram:.3f} bits/char on the held-out text")  # fmt: skip
    held_streams = held[: (len(held) // 8) * 8].reshape(8, -1).T  # [L,8]

    def evaluate(m):
        logits, _ = m(held_streams[:-1], keep_cache=False)
        return losses.softmax_cross_entropy(logits, held_streams[1:])[0]

    ckpt = args.out / "text.npz"

    def meta(heldout_bits):
        return dict(task="text", vocab=vocab.chars, heldout_bits=heldout_bits,
                    unigram_bits=unigram)  # fmt: skip

    history = fit_and_save(
        args, cfg, model, ckpt, meta, adam(model, cfg),
        stream_chunks(train_ids, cfg["batch"], cfg["seq_len"]), TruncatedBPTT(),
        data=text_digest(text), eval_fn=evaluate, unit="char", scale=1 / np.log(2),
    )  # fmt: skip
    final, last = history.eval_loss[-1], history.loss[-20:]  # fewer than 20 after a short run
    steps = f"{len(last)} step{'s' * (len(last) != 1)}"
    print(f"held-out: {final:.3f} bits/char (unigram: {unigram:.3f}); "
          f"training: {np.mean(last):.3f} bits/char (last {steps})")  # fmt: skip
    png = args.out / "text-loss.png"
    plot(png, "character LM on pydoc_data.topics", "bits per character",
         loss_curves(history), hline=("unigram", unigram))  # fmt: skip
    print(f"wrote {ckpt} and {png}")
    sample_text = generate(model, vocab, "The ", 300, 0.8, np.random.default_rng(args.seed))
    print("sample (temperature 0.8):\n" + sample_text)


def train_adding(args, cfg) -> None:
    T, dtype = cfg["seq_len"], np.dtype(args.dtype)
    if T < 2:  # a marked step in each half of the sequence
        raise UsageError(f"--seq-len: expected at least 2 for --task adding (a marked step "
                         f"in each half of the sequence), got {T}")  # fmt: skip
    model = nn.Sequential(
        nn.LSTM(2, cfg["hidden"], cfg["layers"], dtype=dtype, seed=args.seed),
        nn.Linear(cfg["hidden"], 1, dtype=dtype, seed=args.seed + 1),
    )
    forget_bias(model[0], 1.0)
    x_test, y_test = data.adding_batch(np.random.default_rng([args.seed, 2**31]), 1000, T, dtype)
    baseline = float(np.mean((y_test - 1.0) ** 2))
    print(f"adding problem, T = {T}: always answering 1.0 scores MSE {baseline:.4f}")

    def batches(step):
        return data.adding_batch(np.random.default_rng([args.seed, step]), cfg["batch"], T, dtype)

    def step_fn(m, batch):
        x, y = batch
        out, _ = m(x)  # [T,B,1]: only the last step is scored
        loss, g = losses.mse(out[-1], y)
        dout = np.zeros_like(out)
        dout[-1] = g
        m.backward(dout)
        return loss, y.shape[0]

    def evaluate(m):
        out, _ = m(x_test, keep_cache=False)
        return losses.mse(out[-1], y_test)[0]

    ckpt, png = args.out / "adding.npz", args.out / "adding-loss.png"
    history = fit_and_save(args, cfg, model, ckpt,
                           lambda mse: dict(task="adding", seq_len=T, test_mse=mse),
                           adam(model, cfg), batches, step_fn, eval_fn=evaluate,
                           unit="seq")  # fmt: skip
    final = history.eval_loss[-1]
    verdict = "solved (< 0.01)" if final < 0.01 else "not solved yet (>= 0.01): try more --steps"
    print(f"test MSE: {final:.5f} (baseline {baseline:.4f}): {verdict}")
    plot(png, f"adding problem, T = {T}", "MSE", loss_curves(history, eval_label="test"),
         hline=("always 1.0", baseline), logy=True)  # fmt: skip
    print(f"wrote {ckpt} and {png}")


def train_forecast(args, cfg) -> None:
    series = data.forecast_series(seed=args.seed)
    split = len(series) - 250  # forecast the last 250 points
    mean, std = series[:split].mean(), series[:split].std()
    z = ((series - mean) / std).astype(args.dtype)
    L, horizon = cfg["seq_len"], len(series) - split
    if L > split - 2:  # a training window and its next value within the first `split` points
        raise UsageError(f"--seq-len: expected at most {split - 2} for this series "
                         f"({split} training points), got {L}")  # fmt: skip
    model = nn.Sequential(
        nn.LSTM(1, cfg["hidden"], cfg["layers"], dtype=args.dtype, seed=args.seed),
        nn.Linear(cfg["hidden"], 1, dtype=args.dtype, seed=args.seed + 1),
    )
    print(f"series of {len(series)} points: train on {split}, forecast the last {horizon}")

    def windows(rng, n, lo, hi):  # n windows [L+1] starting in [lo, hi - L - 1]
        starts = rng.integers(lo, hi - L - 1, n)
        w = np.stack([z[s : s + L + 1] for s in starts], axis=1)[:, :, None]  # [L+1,n,1]
        return w[:-1], w[1:]

    def step_fn(m, batch):
        x, y = batch
        out, _ = m(x)
        loss, g = losses.mse(out, y)
        m.backward(g)
        return loss, y.size

    test = windows(np.random.default_rng([args.seed, 2**31]), 256, split - L, len(z))

    def evaluate(m):
        return losses.mse(m(test[0], keep_cache=False)[0], test[1])[0]

    batches = lambda step: windows(np.random.default_rng([args.seed, step]), cfg["batch"], 0, split)  # noqa: E731
    ckpt, png = args.out / "forecast.npz", args.out / "forecast.png"
    history = fit_and_save(args, cfg, model, ckpt,
                           lambda mse: dict(task="forecast", mean=mean, std=std, window_mse=mse),
                           adam(model, cfg), batches, step_fn, eval_fn=evaluate,
                           unit="pt")  # fmt: skip

    # Forecast: read the last window of the training part, then feed back predictions.
    model.eval()
    out, state = model(z[split - L : split, None, None])
    preds, x = [], out[-1:]
    for _ in range(horizon):
        preds.append(float(x[0, 0, 0]))
        x, state = model(x, state)
    forecast = np.array(preds) * std + mean
    truth = series[split:]
    mse = float(np.mean((forecast - truth) ** 2))
    naive = float(np.mean((series[split - 1] - truth) ** 2))
    print(f"forecast MSE over {horizon} steps: {mse:.4f} (repeating the last value: {naive:.4f})")
    # as fit_and_save's, less the optimiser
    meta = dict(task="forecast", mean=mean, std=std, mse=mse, steps_done=cfg["steps"],
                settings=run_settings(args, cfg))  # fmt: skip
    checkpoint.save(ckpt, model, None, meta, history_arrays(history))
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=110)
    t = np.arange(len(series))
    ax.plot(t[split - 300 :], series[split - 300 :], color="gray", lw=1, label="truth")
    ax.plot(t[split:], forecast, color="C1", lw=1.5, label=f"forecast (MSE {mse:.3f})")
    ax.axvline(split, color="k", lw=0.8, ls=":")
    ax.set(title="LSTM forecast, fed its own predictions", xlabel="t")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    print(f"wrote {ckpt} and {png}")


# ---- the other commands ----------------------------------------------------------


def cmd_sample(args) -> None:
    where = f"checkpoint {args.checkpoint}"
    if args.checkpoint.is_dir():  # as checkpoint.load says, with where to look
        inside = args.checkpoint / "text.npz"
        hint = f" (did you mean {inside}?)" if inside.is_file() else ""
        raise checkpoint.CheckpointError(f"{where}: a directory, not a checkpoint file{hint}")
    if not args.checkpoint.exists():
        raise checkpoint.CheckpointError(
            f"{where}: no such file ('lstm-ext train --task text' writes one there)"
        )
    ck = checkpoint.load(args.checkpoint)
    meta = ck.meta if isinstance(ck.meta, dict) else {}
    if meta.get("task", "text") != "text":  # one saved by the API may name no task
        raise checkpoint.CheckpointError(
            f"{where}: not a character model (written by 'train --task {meta['task']}')"
        )
    chars = meta.get("vocab")
    if not isinstance(chars, str) or not chars:
        raise checkpoint.CheckpointError(
            f"{where}: its meta has no vocabulary (a string of the characters, as 'train "
            f"--task text' and checkpoint.save(..., meta={{'vocab': vocab.chars}}) write), "
            f"got {chars!r:.60}"
        )
    vocab = data.Vocab(chars)
    try:
        vocab.encode(args.prime, "--prime")
    except ValueError as e:
        raise UsageError(f"{e} (that of {where})") from None
    model = ck.model
    first = model.modules[0] if isinstance(model, nn.Sequential) and model.modules else None
    if not isinstance(first, nn.Embedding):
        raise checkpoint.CheckpointError(
            f"{where}: not a character model (expected a Sequential starting with an Embedding)"
        )
    if first.num_embeddings != len(vocab):
        raise checkpoint.CheckpointError(
            f"{where}: its Embedding has {first.num_embeddings} rows for a vocabulary of "
            f"{len(vocab)} characters"
        )
    try:
        text = generate(model, vocab, args.prime, args.length, args.temperature,
                        np.random.default_rng(args.seed))  # fmt: skip
    except TypeError as e:  # a model whose layers do not fit together
        raise checkpoint.CheckpointError(f"{where}: its model cannot generate text: {e}") from e
    print(text)


def cmd_info(args) -> None:
    from . import _core, _device

    blas = _core.blas_num_threads()
    print(f"lstm_ext {__version__} ({Path(__file__).parent})")
    print(f"core: {_core.build_description()}")
    quota = _core.cpu_quota_cores()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    print(f"threads: {_core.get_num_threads()} (LSTM_EXT_NUM_THREADS or set_num_threads); "
          f"CPU cores available: {len(os.sched_getaffinity(0))}, cgroup CPU limit: "
          f"{f'{quota} cores' if quota else 'none'}, "
          f"OMP_NUM_THREADS: {omp or 'unset'}")  # fmt: skip
    print(f"BLAS: {_core.blas_config()}; {blas} thread{'s' * (blas != 1)} (lstm_ext "
          "parallelises on its own threads, its BLAS on one)")  # fmt: skip
    kernel = _core.packed_recurrent_kernel()
    path = "R packed, hand-written kernel" if _core.packed_recurrent_enabled() else "BLAS per step"
    print(f"recurrent product: {path}; this CPU's kernel: {kernel} "
          "(LSTM_EXT_PACKED_RECURRENT=0: BLAS per step)")  # fmt: skip
    fused = "fused (FMA)" if _core.fused_gate_math() else "each rounded twice (no FMA)"
    print(f"gate pass: the exps' multiply-adds {fused}")
    fast = kernel != "none" and _core.packed_recurrent_enabled()
    bf16 = "R read as bfloat16 panels" if fast else "float32 products on the rounded weights"
    print(f"weight_dtype='bfloat16': {bf16} (the fast path needs the packed kernel)")
    print(f"CUDA path compiled: {'yes' if _device.cuda_compiled() else 'no'}; "
          f"device='cuda' {'available' if _device.cuda_available() else 'unavailable'}: "
          f"{_device.cuda_status()}")  # fmt: skip


def cmd_train(args) -> None:
    cfg = settings(args)
    task = {"text": train_text, "adding": train_adding, "forecast": train_forecast}[args.task]
    args.out = Path(os.path.normpath(args.out))  # "b/../c" is c: mkdir would make b too
    # A run that diverges says so once, as fit's FloatingPointError (main's
    # one line), not also in NumPy's warnings of the overflows on the way.
    with removed_if_left_empty(args.out), np.errstate(over="ignore", invalid="ignore"):
        args.out = out_dir(args.out)  # a failed run leaves no empty --out behind
        task(args, cfg)


def _ignore_sigint():
    """Further Ctrl-C are ignored: the command is on its way out, and a
    KeyboardInterrupt now would only turn a clean exit into a traceback."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv=None) -> int:
    """The command line; returns the exit status (0, 1: an error, 2: bad
    arguments, 130: interrupted). argv None means sys.argv[1:] and a process
    of its own: once interrupted, it ignores SIGINT until it exits. Given an
    argv (a call from Python), it restores the SIGINT handler it found."""
    on_entry = signal.getsignal(signal.SIGINT) or signal.SIG_DFL  # None: not set from Python
    try:
        args = build_parser().parse_args(argv)
        {"train": cmd_train, "sample": cmd_sample, "info": cmd_info}[args.command](args)
    except UsageError as e:
        print(f"lstm-ext: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # checkpoint errors are ValueErrors
        print(f"lstm-ext: error: {e}", file=sys.stderr)
        return 1
    except FloatingPointError as e:  # a run that diverged (fit_and_save says where)
        print(f"lstm-ext: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:  # a model or batch too large for this machine
        print(f"lstm-ext: error: out of memory{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C; from training, e says where it stopped
        _ignore_sigint()
        print(f"lstm-ext: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
    finally:
        if argv is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_entry)
    return 0
