"""lstm_ext's CUDA path against torch.nn.LSTM on the GPU (cuDNN).

Both sides time data that already lives on the GPU, with CUDA events, median
of --reps calls after warm-up calls:
- ours: ``lstm_ext._cuda._bench`` runs lstm_forward (and lstm_backward) on
  device buffers, as a training loop on the GPU would;
- cuDNN: ``torch.nn.LSTM`` on CUDA tensors; forward under ``no_grad`` in eval
  mode, forward+backward as ``out.backward(dy)`` with the input and weights
  requiring gradients. ``cudnn fp32`` has TF32 off (the same arithmetic as
  ours); ``cudnn tf32`` is PyTorch's default (TF32 allowed in cuDNN), shown
  for reference.
"GEMM" is torch's float32 matrix product (TF32 off) on 8192x8192 matrices in
the same run; "/GEMM" is our FLOP rate over it (forward 8TBH(I+H) FLOPs,
backward twice that).

    python benchmarks/bench_gpu.py [--reps 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SIZES = [  # (T, B, I, H)
    (100, 1, 128, 128),
    (100, 8, 256, 256),
    (100, 16, 256, 256),
    (100, 64, 512, 512),
    (50, 128, 1024, 1024),
    (100, 256, 512, 512),
]


def flops(T, B, I, H, backward):
    f = 8 * T * B * H * (I + H)
    return 3 * f if backward else f


def gemm_rate(torch):
    n = 8192
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    times = time_torch(torch, lambda: a @ b, 3, 10)
    return 2 * n**3 / (statistics.median(times) * 1e-3)


def time_torch(torch, fn, warmup, reps):
    for _ in range(warmup):
        fn()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
    ev[0].record()
    for r in range(reps):
        fn()
        ev[r + 1].record()
    torch.cuda.synchronize()
    return [ev[r].elapsed_time(ev[r + 1]) for r in range(reps)]


def fmt(row, key, spec):
    v = row.get(key)
    return format(v, spec) if v is not None else ""


def torch_lstm_ms(torch, T, B, I, H, backward, tf32, reps):
    torch.backends.cudnn.allow_tf32 = tf32
    lstm = torch.nn.LSTM(I, H).cuda()
    x = torch.randn(T, B, I, device="cuda")
    dy = torch.randn(T, B, H, device="cuda")
    if not backward:
        lstm.eval()

        def fn():
            with torch.no_grad():
                lstm(x)
    else:
        x.requires_grad_(True)

        def fn():
            out, _ = lstm(x)
            out.backward(dy)

    return statistics.median(time_torch(torch, fn, 3, reps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", help="write the rows here as JSON")
    ap.add_argument(
        "--sweep-blocks",
        action="store_true",
        help="also time the persistent kernel's block counts (LSTM_EXT_CUDA_BLOCKS)",
    )
    args = ap.parse_args(argv)

    import lstm_ext

    if not lstm_ext.cuda_available():
        print(f"bench_gpu: no GPU path here: {lstm_ext.cuda_status()}", file=sys.stderr)
        return 1
    from lstm_ext import _cuda

    try:
        import torch

        has_torch = torch.cuda.is_available()
    except ImportError:
        has_torch = False
    print(f"# {lstm_ext.cuda_status()}")
    print(f"# {time.strftime('%Y-%m-%d')}, torch {torch.__version__ if has_torch else 'absent'}, "
          f"cuDNN {torch.backends.cudnn.version() if has_torch else '-'}")  # fmt: skip
    rate = gemm_rate(torch) if has_torch else float("nan")
    print(f"# GEMM (torch fp32, 8192^3): {rate / 1e12:.1f} TFLOP/s")

    rows = []
    for dtype in ("float32", "float64"):
        for T, B, I, H in SIZES if dtype == "float32" else SIZES[2:4]:
            for backward in (False, True):
                ours = statistics.median(
                    _cuda._bench(T, B, I, H, dtype=dtype, backward=backward, reps=args.reps)
                )
                row = dict(T=T, B=B, I=I, H=H, dtype=dtype,
                           pass_="fwd+bwd" if backward else "fwd", ms=ours,
                           tflops=flops(T, B, I, H, backward) / (ours * 1e-3) / 1e12)  # fmt: skip
                row["of_gemm"] = row["tflops"] * 1e12 / rate if dtype == "float32" else None
                if has_torch and dtype == "float32":
                    size = (T, B, I, H, backward)
                    row["cudnn_fp32_ms"] = torch_lstm_ms(torch, *size, False, args.reps)
                    row["cudnn_tf32_ms"] = torch_lstm_ms(torch, *size, True, args.reps)
                    row["speedup_vs_fp32"] = row["cudnn_fp32_ms"] / ours
                rows.append(row)

    print("| T,B,I,H | dtype | pass | ours ms | TFLOP/s | /GEMM "
          "| cudnn fp32 ms | cudnn/ours | cudnn tf32 ms |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['T']},{r['B']},{r['I']},{r['H']} | {r['dtype']} | {r['pass_']} | "
              f"{fmt(r, 'ms', '.3f')} | {fmt(r, 'tflops', '.2f')} | {fmt(r, 'of_gemm', '.2f')} | "
              f"{fmt(r, 'cudnn_fp32_ms', '.3f')} | {fmt(r, 'speedup_vs_fp32', '.2f')} | "
              f"{fmt(r, 'cudnn_tf32_ms', '.3f')} |")  # fmt: skip
    if args.sweep_blocks:
        import os

        print("\n| T,B,I,H | fwd ms at LSTM_EXT_CUDA_BLOCKS = 8 / 16 / 32 / 64 / 128 |")
        for T, B, I, H in [(100, 1, 128, 128), (100, 4, 256, 256), (100, 8, 256, 256),
                           (100, 16, 512, 512), (50, 8, 1024, 1024)]:  # fmt: skip
            ms = []
            for blocks in (8, 16, 32, 64, 128):
                os.environ["LSTM_EXT_CUDA_BLOCKS"] = str(blocks)
                ms.append(statistics.median(_cuda._bench(T, B, I, H, reps=args.reps)))
            os.environ.pop("LSTM_EXT_CUDA_BLOCKS")
            print(f"| {T},{B},{I},{H} | " + " / ".join(f"{m:.3f}" for m in ms) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(device=lstm_ext.cuda_status(), gemm_flops=rate, rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
