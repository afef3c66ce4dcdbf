#!/usr/bin/env python3
"""specula's CUDA verify kernel against PyTorch, timed in the same run (issue: CUDA backend).

Runs the native benchmark (bench_cuda --json, from a build with -DSPECULA_CUDA=ON) and, for
each verify configuration it reports (B in {1, 64, 256}, gamma in {4, 8}, V in {32000,
128256}, f32 logits, T = 1, no filters), times a batched PyTorch implementation of the same
computation in the style of Hugging Face transformers' `_speculative_sampling`: softmax of
both models' logits, the ratio test of every drafted token, the first rejection, the
residual max(0, p - q) renormalised and sampled (or the bonus token from p). Both are timed
on device-resident inputs with CUDA events (mean of back-to-back runs), so the ratio is
kernel time against kernel time.

    python3 bench/cuda/torch_compare.py --bench build-cuda/bench_cuda [--quick] [--json OUT]

Prints a Markdown table; the goal is specula >= 10x faster than PyTorch for B >= 64, and
>= 70% of the device-to-device copy bandwidth. The accepted/row columns are a sanity check
that both compute the same thing on inputs of the same law (draft = target + N(0, 1), target
logits 3 N(0, 1)): they agree to within sampling noise, not exactly.
"""
import argparse
import json
import subprocess
import sys

import torch


def speculative_sampling(target_logits, draft_logits, draft_tokens, temperature=1.0, generator=None):
    """target_logits (B, G+1, V), draft_logits (B, G, V), draft_tokens (B, G) int64.

    Returns the emitted tokens (B, G+1), -1 padded, and the accepted counts (B).
    """
    B, G1, V = target_logits.shape
    G = G1 - 1
    p = torch.softmax(target_logits / temperature, dim=-1)
    q = torch.softmax(draft_logits / temperature, dim=-1)
    idx = draft_tokens.unsqueeze(-1)
    p_i = p[:, :G].gather(-1, idx).squeeze(-1)
    q_i = q.gather(-1, idx).squeeze(-1)
    r = torch.rand(p_i.shape, device=p.device, generator=generator)
    accepted = r <= p_i / q_i
    n = ((~accepted).cumsum(dim=-1) < 1).sum(dim=-1)  # the first rejection, or G
    rows = torch.arange(B, device=p.device)
    p_n = p[rows, n]
    q_n = q[rows, n.clamp(max=G - 1)] * (n < G).unsqueeze(-1)  # no residual after the last draft: bonus from p
    residual = (p_n - q_n).clamp_min(0)
    residual = residual / residual.sum(dim=-1, keepdim=True)
    nxt = torch.multinomial(residual, 1, generator=generator).squeeze(-1)
    pos = torch.arange(G1, device=p.device).unsqueeze(0)
    padded = torch.cat([draft_tokens, torch.full_like(draft_tokens[:, :1], -1)], dim=1)
    tokens = torch.where(pos < n.unsqueeze(1), padded, torch.full_like(padded, -1))
    tokens = torch.where(pos == n.unsqueeze(1), nxt.unsqueeze(1), tokens)
    return tokens, n


def time_ms(fn, min_ms=20.0):
    """Mean time of back-to-back calls (CUDA events), after warm-up, for at least min_ms."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    reps = 1
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        total = start.elapsed_time(end)
        if total >= min_ms or reps >= 1000:
            return total / reps
        reps = min(1000, max(reps * 2, int(reps * min_ms / max(total, 1e-3)) + 1))


def torch_row(B, G, V, generator):
    target = torch.randn(B, G + 1, V, device="cuda", generator=generator) * 3
    draft = target[:, :G] + torch.randn(B, G, V, device="cuda", generator=generator)
    q = torch.softmax(draft, dim=-1).reshape(B * G, V)
    tokens = torch.multinomial(q, 1, generator=generator).reshape(B, G)
    del q
    ms = time_ms(lambda: speculative_sampling(target, draft, tokens, generator=generator))
    _, n = speculative_sampling(target, draft, tokens, generator=generator)
    return ms, float(n.float().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default="build-cuda/bench_cuda", help="the bench_cuda executable")
    ap.add_argument("--quick", action="store_true", help="B in {1, 64} only")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_compare: skipped, torch sees no CUDA device", file=sys.stderr)
        return 77
    torch.backends.cuda.matmul.allow_tf32 = False
    cmd = [a.bench, "--json"] + (["--quick"] if a.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        print(f"torch_compare: {' '.join(cmd)} exited {proc.returncode}", file=sys.stderr)
        return proc.returncode
    native = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    verify = [r for r in native if r["kernel"] == "verify"]
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1)
    print(f"specula verify (CUDA) vs PyTorch speculative sampling on {torch.cuda.get_device_name(0)}, "
          f"torch {torch.__version__}, f32 logits, T = 1, no filters")
    print("| B | gamma | V | specula us | GB/s | % of copy | torch us | speedup | accepted/row specula | torch |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = []
    for r in verify:
        t_ms, t_acc = torch_row(r["B"], r["gamma"], r["V"], gen)
        row = dict(r, torch_us=t_ms * 1e3, speedup=t_ms * 1e3 / r["kernel_us"], torch_accepted_per_row=t_acc)
        out.append(row)
        print(f"| {r['B']} | {r['gamma']} | {r['V']} | {r['kernel_us']:.1f} | {r['gbps']:.0f} | "
              f"{100 * r['ratio']:.0f}% | {row['torch_us']:.1f} | {row['speedup']:.1f}x | "
              f"{r['accepted_per_row']:.2f} | {t_acc:.2f} |", flush=True)
        torch.cuda.empty_cache()
    print()
    print("The other kernels (bench_cuda):")
    print("| kernel | B | gamma | V | rows | kernel us | GB/s | % of copy | copy-in ms | copy-out ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in native:
        if r["kernel"] != "verify":
            print(f"| {r['kernel']} | {r['B']} | {r['gamma']} | {r['V']} | {r['rows']} | {r['kernel_us']:.1f} | "
                  f"{r['gbps']:.0f} | {100 * r['ratio']:.0f}% | {r['copy_in_ms']:.2f} | {r['copy_out_ms']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"verify": out, "native": native}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
