"""Where a training step of cellvi's SCVI spends its time, on the CPU.

One step is cut into the phases the trainer runs: cutting the minibatch out of the CSR matrix
(``cut``), the encoder (``inference``), the decoder (``generative``), the likelihood and KL
(``loss``), ``backward`` and the optimizer step (``optimizer``). Each phase is timed with
``perf_counter`` over ``--steps`` steps after ``--warmup`` steps (median per step, and its share
of the step). Then ``torch.profiler`` runs the same steps and lists the operators that take the
most time (self CPU time, forward and backward together), so that the backward can be split
by operator too.

Data: kang (``--data``, default kang_se_12261, batch sample_id) or ``--synthetic N,G`` (the
simulation of bench_scvi.py). Settings as bench_scvi.py: zinb (``--gene-likelihood``), batch
128, 1 hidden layer of 128, 10 latent dimensions, Adam (lr 1e-3, eps 0.01, weight decay 1e-6).

    .venv/bin/python benchmarks/profile_step.py --threads 2
    .venv/bin/python benchmarks/profile_step.py --synthetic 100000,2000 --threads 2 --record
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, record_section  # noqa: E402

PHASES = ("cut", "inference", "generative", "loss", "backward", "optimizer")


def load(args):
    import anndata

    if args.synthetic:
        from bench_scvi import simulate_counts

        n_cells, n_genes = (int(v) for v in args.synthetic.split(","))
        return simulate_counts(n_cells, n_genes), "batch", f"synthetic {n_cells:,} x {n_genes:,}"
    adata = anndata.read_h5ad(args.data)
    return adata, "sample_id", f"{Path(args.data).name} ({adata.n_obs:,} x {adata.n_vars:,})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--synthetic", help="N_CELLS,N_GENES of simulated counts instead of --data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--gene-likelihood", default="zinb")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--top", type=int, default=15, help="operators listed from the profiler")
    p.add_argument("--record", action="store_true", help="append the profile to RESULTS.md")
    args = p.parse_args(argv)
    started = time.perf_counter()

    import numpy as np
    import torch

    import cellvi
    from cellvi.train._trainer import make_optimizer

    torch.set_num_threads(args.threads)
    adata, batch_key, label = load(args)
    cellvi.settings.seed = 0
    cellvi.SCVI.setup_anndata(adata, batch_key=batch_key)
    model = cellvi.SCVI(adata, gene_likelihood=args.gene_likelihood)
    module = model.module
    module.train()
    data = model._data()
    generator = torch.Generator().manual_seed(0)
    cells = np.arange(adata.n_obs)
    batches = data.epoch_minibatches(cells, args.batch_size, generator)
    # The trainer's optimizer (fused Adam where torch has it).
    optimizer = make_optimizer([q for q in module.parameters() if q.requires_grad], "Adam", lr=1e-3, eps=0.01,
                               weight_decay=1e-6)

    def step(idx, clock=None):
        marks = [time.perf_counter()]
        tensors = data.minibatch(idx)
        marks.append(time.perf_counter())
        inference_out = module.inference(**module.inference_inputs(tensors))
        marks.append(time.perf_counter())
        generative_out = module.generative(**module.generative_inputs(tensors, inference_out))
        marks.append(time.perf_counter())
        out = module.loss(tensors, inference_out, generative_out, kl_weight=1.0)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if clock is not None:
            for name, a, b in zip(PHASES, marks[:-1], marks[1:]):
                clock[name].append(b - a)

    n_needed = args.warmup + args.steps
    order = [batches[i % len(batches)] for i in range(2 * n_needed)]
    for idx in order[:args.warmup]:
        step(idx)
    clock = {name: [] for name in PHASES}
    for idx in order[args.warmup:n_needed]:
        step(idx, clock)
    per_phase = {name: statistics.median(v) * 1e3 for name, v in clock.items()}
    mean_phase = {name: statistics.fmean(v) * 1e3 for name, v in clock.items()}
    total, total_mean = sum(per_phase.values()), sum(mean_phase.values())
    rows = ["| phase | ms per step (median) | share | ms per step (mean) |", "| --- | --- | --- | --- |"]
    rows += [f"| {name} | {ms:.2f} | {ms / total:.0%} | {mean_phase[name]:.2f} |" for name, ms in per_phase.items()]
    rows.append(f"| whole step | {total:.2f} | {args.batch_size / total * 1e3:,.0f} cells/s | "
                f"{total_mean:.2f} ({args.batch_size / total_mean * 1e3:,.0f} cells/s) |")
    # The same network through the trainer, for one epoch: what train() adds to the steps.
    timed = cellvi.SCVI(adata, gene_likelihood=args.gene_likelihood)
    t0 = time.perf_counter()
    timed.train(max_epochs=1, train_size=1.0, batch_size=args.batch_size, progress_bar=False)
    train_s = time.perf_counter() - t0
    rows.append(f"| train(), 1 epoch of {adata.n_obs:,} cells | {train_s / len(batches) * 1e3:.2f} per step | | "
                f"{adata.n_obs / train_s:,.0f} cells/s |")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in order[n_needed:n_needed + args.steps]:
            step(idx)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    whole = sum(e.self_cpu_time_total for e in events)
    ops = ["| operator (forward and backward) | ms per step (self) | share | calls per step |", "| --- | --- | --- | --- |"]
    for e in events[:args.top]:
        ops.append(f"| `{e.key}` | {e.self_cpu_time_total / 1e3 / args.steps:.2f} | "
                   f"{e.self_cpu_time_total / whole:.0%} | {e.count / args.steps:.0f} |")
    print(f"{label}, {args.gene_likelihood}, batch {args.batch_size}, {args.threads} threads")
    print("\n".join(rows))
    print("\n".join(ops))
    if args.record:
        record_section(f"Profile of a training step: {label}, {args.gene_likelihood}, batch {args.batch_size}",
                       time.perf_counter() - started, args.threads,
                       [f"{args.steps} steps after {args.warmup} warm-up steps; phases timed with perf_counter "
                        "(median per step); operators from torch.profiler over another "
                        f"{args.steps} steps (self CPU time, so the profiler's own overhead is included)"],
                       rows + [""] + ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
