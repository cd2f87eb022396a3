"""`vqrae bench quantizer`: our SimVQ against vector-quantize-pytorch's SimVQ, and our lookup against a bare matmul.

Both quantizers get the same frozen codebook, the same W and the same inputs (vectors already in codebook space),
so they must pick the same codes; the script checks that before timing. Rows:
- train step: forward + backward of the quantizer loss (both recompute C W, as training must);
- inference lookup: codes only, no grad (ours reuses its cached C W; the peer recomputes it every call);
- bare matmul: z @ (C W)^T alone, the floor any exact L2 search sits on.
Times are medians over --repeats calls after a warm-up. Peak memory is the growth of the resident set (CPU) or of
the CUDA allocator's peak during one call, each call measured in a fresh subprocess on CPU so that no allocator
cache of an earlier run hides it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-vectors", type=int, default=4096, help="vectors quantized per call (default 4096)")
    p.add_argument("--codebook-size", type=int, default=16384, help="K (default 16384)")
    p.add_argument("--dim", type=int, default=1536, help="codebook dim e (default 1536)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row after one warm-up (default 3)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--lookup-memory-mb", type=float, default=256, help="our search's chunk budget (default 256)")


def _setup(args: argparse.Namespace):
    from vector_quantize_pytorch import SimVQ as PeerSimVQ

    from vqrae.tokenizer.quantizer import SimVQ

    torch.manual_seed(0)
    ours = SimVQ(dim=args.dim, codebook_size=args.codebook_size, codebook_dim=args.dim,
                 lookup_memory_mb=args.lookup_memory_mb).to(args.device)
    peer = PeerSimVQ(dim=args.dim, codebook_size=args.codebook_size, rotation_trick=False).to(args.device)
    with torch.no_grad():
        peer.frozen_codebook.copy_(ours.codebook)
        peer.code_transform.weight.copy_(ours.codebook_map.weight)
    z = torch.randn(args.num_vectors, args.dim, device=args.device) * args.dim**-0.5
    return ours, peer, z


def _cases(ours, peer, z):
    """name -> zero-argument callable; every callable does the whole unit of work of its row."""

    def ours_train():
        ze = z.clone().requires_grad_(True)
        out = ours.quantize(ze)
        (out.loss + out.quantized.sum() * 0).backward()

    def peer_train():
        ze = z.clone().requires_grad_(True)
        quantized, _, loss = peer(ze[None])
        (loss + quantized.sum() * 0).backward()

    def ours_lookup():
        with torch.no_grad():
            from vqrae.tokenizer.quantizer import nearest_code

            return nearest_code(z, ours.mapped_codebook(), ours.lookup_memory_mb)

    def peer_lookup():
        with torch.no_grad():
            return peer(z[None])[1][0]

    with torch.no_grad():
        mapped = ours.mapped_codebook()

    def bare_matmul():
        with torch.no_grad():
            return z @ mapped.t()

    return {"ours_train": ours_train, "peer_train": peer_train, "ours_lookup": ours_lookup,
            "peer_lookup": peer_lookup, "bare_matmul": bare_matmul}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, repeats: int, device: str) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(args: argparse.Namespace, name: str, queue) -> None:
    torch.set_num_threads(args.threads)
    ours, peer, z = _setup(args)
    fn = _cases(ours, peer, z)[name]
    base = _rss_mb("VmRSS")
    fn()
    queue.put(_rss_mb("VmHWM") - base)


def _peak_mb(args: argparse.Namespace, name: str, cases) -> float:
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        cases[name]()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    keys = ("num_vectors", "codebook_size", "dim", "device", "lookup_memory_mb", "threads")
    plain = argparse.Namespace(**{k: getattr(args, k) for k in keys})  # the parsed args hold unpicklable callbacks
    proc = ctx.Process(target=_peak_child, args=(plain, name, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def main(args: argparse.Namespace) -> int:
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        raise ValueError("the peer needs vector-quantize-pytorch: pip install -e '.[dev]'") from None
    args.threads = torch.get_num_threads()
    ours, peer, z = _setup(args)
    cases = _cases(ours, peer, z)
    ours_codes, peer_codes = cases["ours_lookup"](), cases["peer_lookup"]()
    agree = (ours_codes == peer_codes).float().mean().item()
    print(f"SimVQ lookup, K={args.codebook_size}, e={args.dim}, {args.num_vectors} vectors, {args.device}, "
          f"{args.threads} threads; codes agree with the peer on {agree:.2%} of vectors")
    rows = {}
    for name in cases:
        rows[name] = (_time(cases[name], args.repeats, args.device), _peak_mb(args, name, cases))
    print(f"{'row':<14}{'ms/call':>10}{'peak MB':>10}")
    for name, (sec, mb) in rows.items():
        print(f"{name:<14}{sec * 1e3:>10.1f}{mb:>10.1f}")
    ratio = lambda a, b, i: rows[a][i] / max(rows[b][i], 1e-9)
    print(f"train step   ours/peer: time {ratio('ours_train', 'peer_train', 0):.2f}x, "
          f"peak memory {ratio('ours_train', 'peer_train', 1):.2f}x")
    print(f"lookup       ours/peer: time {ratio('ours_lookup', 'peer_lookup', 0):.2f}x, "
          f"peak memory {ratio('ours_lookup', 'peer_lookup', 1):.2f}x")
    print(f"lookup       ours/bare matmul: time {ratio('ours_lookup', 'bare_matmul', 0):.2f}x")
    return 0 if agree > 0.999 else 1
