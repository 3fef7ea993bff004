"""Text benchmark: the text recipes trained for a fixed budget on text:shakespeare, the nanoGPT CPU
configuration in genforge's GPT on the same split and budget, the Kneser-Ney 5-gram row, sampling speed with
and without the KV cache, and the server's tokens/s and time to first token with and without batching.

    python benchmarks/text.py --budget 600 [--recipes shakespeare-gpt-cpu ...] [--skip-train]

Every row is measured in this run on this machine: held-out nats per character on the test plays (the split
``genforge data check text:shakespeare`` names), training tokens/s with its share of the fp32 matmul peak
measured at the start, distinct-1/2 and the longest substring shared with the training text of 8 samples of
512 tokens at temperature 1; on every GPT, 512 new tokens with the KV cache and by recomputing every window
(the cache spares recomputing the context, so its gain grows with the context); on the first GPT,
``genforge serve`` (a real uvicorn server in a subprocess, keys and audit log
on) at concurrency 1 and 16, with continuous batching and with ``--no-batching``, streaming 128 tokens per
request, measuring tokens/s and p50/p99 time to first token. Writes its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, train_settings, write_section  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402
from benchmarks.serve_load import free_port  # noqa: E402

MARK_START, MARK_END = "<!-- text:start -->", "<!-- text:end -->"
RECIPES = ["shakespeare-gpt-cpu", "shakespeare-gpt-bpe-cpu", "shakespeare-sentence-vae", "shakespeare-nanogpt-cpu"]
NANOGPT = "shakespeare-nanogpt-cpu"


def flops_per_token(meta: dict) -> float:
    """Training FLOPs per token of a GPT: 6 N (forward and backward through the weights; Kaplan et al. 2020)
    plus the attention scores, 6 L T d (forward 2 L T d for QK^T and for AV, backward twice that)."""
    cfg = meta["train_config"]
    d, layers, t = cfg["text_n_embd"], cfg["text_n_layer"], cfg["text_context"]
    vocab = meta["net_options"]["vocab_size"]
    weights = layers * 12 * d * d + vocab * d  # blocks (qkv, proj, 4x MLP) and the tied embedding as output layer
    return 6 * weights + 6 * layers * t * d


def train_rows(recipes: list[str], budget: float, runs: Path, skip: bool, threads: int) -> list[dict]:
    from genforge.config import load_config
    from genforge.training import train

    rows = []
    for recipe in recipes:
        run = runs / recipe
        if not (skip and (run / "checkpoints" / "last.json").is_file()):
            # nanoGPT's configuration keeps its 2000 iterations (and its schedule)
            overrides = [*train_settings(budget, evaluate=True, recipe_steps=recipe == NANOGPT),
                         f"num_threads={threads}"]
            cfg = load_config(recipe, overrides)
            t0 = time.perf_counter()
            train(cfg, run, quiet=True)
            print(f"{recipe}: trained {time.perf_counter() - t0:.0f} s", flush=True)
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rows.append({"recipe": recipe, "run": run, "logs": logs})
    return rows


def score(row: dict, splits, index, peak: float, max_eval_tokens: int) -> None:
    """Held-out nats per character (test plays), tokens/s, share of peak, samples' diversity and copying; for a
    language model also sampling speed with the KV cache and without (``row["cache"]``, :func:`cache_speed`)."""
    import genforge
    from genforge.generation.text import generate_text
    from genforge.metrics.text import heldout_nll, sample_scores, sentence_vae_heldout

    model = genforge.load(row["run"], device="cpu")
    meta, logs = model.meta, row["logs"]
    cfg = meta["train_config"]
    row.update(model=meta["model"], steps=logs[-1]["step"] if logs else 0,
               seconds=logs[-1].get("time", 0.0) if logs else 0.0, tokenizer=cfg["text_tokenizer"],
               context=cfg["text_context"])
    test = splits.text("test")
    if model.family == "lm":
        row.update(heldout_nll(model.nets["gpt"], model.output.tokenizer, test, batch_size=32,
                               max_tokens=max_eval_tokens))
        # the loop logs examples (windows) per second; a window trains on `context` tokens. The first log
        # window holds the warm-up, so the median of the others is the rate
        rates = [r["images_per_sec"] for r in logs[1:] if "images_per_sec" in r] or \
                [r["images_per_sec"] for r in logs if "images_per_sec" in r]
        row["tokens_per_s"] = statistics.median(rates) * cfg["text_context"] if rates else float("nan")
        row["peak_share"] = row["tokens_per_s"] * flops_per_token(meta) / 1e9 / peak
        row["cache"] = cache_speed(model)  # the cache's gain grows with the context it spares recomputing
    else:
        row.update(sentence_vae_heldout(model.nets, model.output.tokenizer, test, cfg["text_context"]))
        rates = [r["images_per_sec"] for r in logs if "images_per_sec" in r]
        row["tokens_per_s"] = float("nan")
        row["sentences_per_s"] = statistics.median(rates) if rates else float("nan")
    out = generate_text(model, 8, seed=0, max_new_tokens=512 if model.family == "lm" else cfg["text_context"],
                        temperature=1.0)
    row.update(sample_scores(out.texts, index))
    row["sample"] = out.texts[0][:300]


def cache_speed(model, tokens: int = 512, repeats: int = 5) -> dict:
    """Seconds for ``tokens`` new tokens of one sample of the loaded ``model`` with the KV cache and recomputing
    every window: the median of ``repeats`` timings of each, taken in turns (one timing swings by 30% or more on
    a 2-core VM), and their ratio ``speedup``."""
    import torch

    from genforge.generation.text import generate_text

    times = {True: [], False: []}
    for use_cache in (True, False):
        generate_text(model, 1, seed=0, max_new_tokens=16, use_cache=use_cache)  # warm-up
    out = {}
    for _ in range(repeats):
        for use_cache in (True, False):
            t0 = time.perf_counter()
            s = generate_text(model, 1, seed=1, max_new_tokens=tokens, use_cache=use_cache)
            times[use_cache].append(time.perf_counter() - t0)
            out["tokens"] = len(s.samples[0].tokens)
    out["cache"], out["recompute"] = statistics.median(times[True]), statistics.median(times[False])
    out["speedup"] = out["recompute"] / out["cache"]
    out["repeats"] = repeats
    out["threads"] = torch.get_num_threads()
    return out


class Server:
    def __init__(self, run: Path, batching: bool, work: Path, key: str, threads: int):
        self.port = free_port()
        cmd = [sys.executable, "-m", "genforge", "serve", f"bench={run}", "--host", "127.0.0.1", "--port",
               str(self.port), "--keys-file", str(work / "keys.json"), "--audit-log",
               str(work / f"audit-{batching}.jsonl"), "--rate", "0", "--token-rate", "0", "--max-queue", "1024",
               "--device", "cpu", "--timeout", "600", *(["--threads", str(threads)] if threads else [])]
        if not batching:
            cmd.append("--no-batching")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GENFORGE_AUDIT_KEY": secrets.token_hex(32)}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise SystemExit("server did not start within 180 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(port: int, key: str, concurrency: int, requests: int, new_tokens: int) -> dict:
    """``concurrency`` closed-loop clients, ``requests`` streamed requests in all: tokens/s and time to first
    token (the first text event)."""
    import httpx

    ttft, tokens, errors = [], 0, 0
    seeds = iter(range(10**6))
    left = [requests]

    async def client(http):
        nonlocal tokens, errors
        while left[0] > 0:
            left[0] -= 1
            body = {"model": "bench", "n": 1, "seed": next(seeds), "max_new_tokens": new_tokens, "stream": True,
                    "prompt": "ROMEO:\n"}
            t0 = time.perf_counter()
            first = None
            async with http.stream("POST", "/v1/generate", json=body) as r:
                if r.status_code != 200:
                    errors += 1
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "text" in event and first is None:
                        first = time.perf_counter() - t0
                    if "finish_reason" in event:
                        tokens += event["tokens"]
            if first is not None:
                ttft.append(first)

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=600) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ttft.sort()
    pick = lambda q: ttft[min(len(ttft) - 1, int(q * len(ttft)))] * 1000 if ttft else float("nan")  # noqa: E731
    return {"concurrency": concurrency, "requests": len(ttft), "tokens_per_s": tokens / wall,
            "ttft_p50_ms": pick(0.5), "ttft_p99_ms": pick(0.99), "errors": errors}


def serve_rows(run: Path, new_tokens: int, per_client: int, threads: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="text-bench-") as tmp:
        work = Path(tmp)
        key = subprocess.run([sys.executable, "-m", "genforge", "keys", "create", "--role", "admin", "--keys-file",
                              str(work / "keys.json")], check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip()
        for batching in (True, False):
            server = Server(run, batching, work, key, threads)
            try:
                asyncio.run(load(server.port, key, 2, 2, 8))  # warm-up
                for c in (1, 16):
                    row = asyncio.run(load(server.port, key, c, max(2, per_client * c), new_tokens))
                    row["batching"] = batching
                    rows.append(row)
                    print(f"serve batching {'on ' if batching else 'off'} c={c:<2} {row['tokens_per_s']:7.1f} "
                          f"tokens/s  TTFT p50 {row['ttft_p50_ms']:.0f} ms p99 {row['ttft_p99_ms']:.0f} ms  "
                          f"errors {row['errors']}", flush=True)
            finally:
                server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--budget", type=float, default=600, help="training seconds per recipe (default 600)")
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "text-bench-runs"))
    parser.add_argument("--skip-train", action="store_true", help="reuse finished runs in --runs")
    parser.add_argument("--serve-tokens", type=int, default=128, help="new tokens per server request")
    parser.add_argument("--serve-requests", type=int, default=2, help="requests per client at each concurrency")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training, sampling and the server "
                        "(0: one per core; on a loaded machine 1 avoids threads waiting on each other)")
    parser.add_argument("--eval-tokens", type=int, default=100_000, help="held-out tokens scored (0: all)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    facts = print_machine()
    peak = facts["fp32_matmul_gflops"]
    load_before = os.getloadavg()

    from genforge.data.text import load_text
    from genforge.metrics.text import KneserNey, ShingleIndex

    splits = load_text("text:shakespeare")
    train_text, test_text = splits.text("train"), splits.text("test")
    index = ShingleIndex(train_text)
    t0 = time.perf_counter()
    kn = KneserNey(train_text, order=5)
    kn_row = {"recipe": "Kneser-Ney 5-gram (reference)", "nats_per_char": kn.nats_per_char(test_text)}
    kn_row["bits_per_char"] = kn_row["nats_per_char"] / math.log(2)
    print(f"n-gram: {kn_row['nats_per_char']:.3f} nats/char on the test plays ({time.perf_counter() - t0:.0f} s)",
          flush=True)

    rows = train_rows(args.recipes, args.budget, Path(args.runs), args.skip_train, args.threads)
    for row in rows:
        score(row, splits, index, peak, args.eval_tokens)
        print(f"{row['recipe']}: {row.get('nats_per_char', float('nan')):.3f} nats/char, "
              f"{row.get('tokens_per_s', float('nan')):.0f} tokens/s, {row['steps']} steps", flush=True)
        if cache := row.get("cache"):
            print(f"{row['recipe']}: KV cache: {cache['tokens']} tokens in {cache['cache']:.2f} s with the cache, "
                  f"{cache['recompute']:.2f} s recomputing ({cache['speedup']:.1f}x)", flush=True)
    gpt = next((r for r in rows if r["model"] == "gpt"), None)
    served = serve_rows(gpt["run"], args.serve_tokens, args.serve_requests, args.threads) if gpt else []
    load_after = os.getloadavg()

    # ------------------------------------------------------------------------------------------ the section
    def nat(r, key="nats_per_char"):
        v = r.get(key)
        return f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else "-"

    def sampling(r):  # sampling tokens/s with the KV cache and recomputing, and their ratio
        c = r.get("cache")
        if not c:
            return "- | - | -"
        return f"{c['tokens'] / c['cache']:.0f} | {c['tokens'] / c['recompute']:.0f} | {c['speedup']:.1f}x"

    lines = ["| row | model | tokenizer | context | steps | train s | held-out nats/char | bits/char | nats/token | "
             "tokens/s | share of fp32 peak | distinct-1 | distinct-2 | longest shared | copied >= 50 | "
             "sampling tokens/s, KV cache | recomputing | KV speedup |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = r.get("peak_share")
        lines.append(f"| {r['recipe']} | {r['model']} | {r['tokenizer']} | {r['context']} | {r['steps']} | "
                     f"{r['seconds']:.0f} | {nat(r)} | {nat(r, 'bits_per_char')} | {nat(r, 'nats_per_token')} | "
                     f"{r['tokens_per_s']:.0f} | {f'{100 * share:.1f}%' if share else '-'} | "
                     f"{r['distinct_1']:.3f} | {r['distinct_2']:.3f} | {r['longest_shared_max']} | {r['copied']}/8 | "
                     f"{sampling(r)} |")
    lines.append(f"| {kn_row['recipe']} | counts | char | - | - | - | {nat(kn_row)} | {nat(kn_row, 'bits_per_char')} | "
                 "- | - | - | - | - | - | - | - | - | - |")
    serve_lines = ["| batching | concurrency | requests | tokens/s | TTFT p50 ms | TTFT p99 ms | errors |",
                   "|---|---:|---:|---:|---:|---:|---:|"]
    for r in served:
        serve_lines.append(f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['requests']} | "
                           f"{r['tokens_per_s']:.1f} | {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | "
                           f"{r['errors']} |")
    findings = []
    best = min((r for r in rows if r["model"] == "gpt" and r["recipe"] != NANOGPT),
               key=lambda r: r["nats_per_char"], default=None)
    nano = next((r for r in rows if r["recipe"] == NANOGPT), None)
    if best:
        findings.append(f"best text recipe: {best['recipe']} at **{best['nats_per_char']:.3f}** nats/char on the "
                        f"test plays after {args.budget:g} s (target <= 1.60 after 600 s on a quiet 2-core machine)")
    if best and nano:
        findings.append(f"nanoGPT's CPU configuration on the same split and budget: {nano['nats_per_char']:.3f} "
                        f"({'above' if nano['nats_per_char'] > best['nats_per_char'] else 'BELOW'} the best recipe)")
    findings.append(f"Kneser-Ney 5-gram on the same test plays: {kn_row['nats_per_char']:.3f} nats/char")
    timed = [r for r in rows if r.get("cache")]
    if timed:
        c = timed[0]["cache"]
        findings.append(f"sampling {c['tokens']} new tokens, one sample, {c['threads']} threads, median of "
                        f"{c['repeats']} timings each, the KV cache against recomputing each window (target >= 5x): "
                        + ", ".join(f"{r['recipe']} (context {r['context']}) "
                                    f"**{r['cache']['speedup']:.1f}x**" for r in timed))
    on16 = next((r for r in served if r["batching"] and r["concurrency"] == 16), None)
    off16 = next((r for r in served if not r["batching"] and r["concurrency"] == 16), None)
    if on16 and off16:
        findings.append(f"server tokens/s at concurrency 16, continuous batching / one sample at a time: "
                        f"{on16['tokens_per_s']:.1f} / {off16['tokens_per_s']:.1f} = "
                        f"**{on16['tokens_per_s'] / max(off16['tokens_per_s'], 1e-9):.1f}x** (target >= 2x)")
    copied = sum(r["copied"] for r in rows)
    findings.append(f"samples at temperature 1 sharing >= 50 characters with the training text: {copied} of "
                    f"{8 * len(rows)} (target 0)")
    section = "\n".join([
        MARK_START, "## Text (`benchmarks/text.py`)", "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, fp32 matmul {peak:.0f} GFLOP/s measured at the "
        f"start; load average before / after: {' '.join(f'{v:.2f}' for v in load_before)} / "
        f"{' '.join(f'{v:.2f}' for v in load_after)} (this benchmark's own threads count in it)",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `{command_line('text.py')}`",
        f"- data: text:shakespeare, split by play; held out for test: "
        f"{', '.join(d.name for d in splits.test)} ({len(test_text):,} characters)",
        f"- each recipe trained {args.budget:g} s of wall clock (`max_seconds`), {args.threads or 'all'} torch "
        f"thread(s); held-out: the first {args.eval_tokens or 'all'} tokens of the test plays; samples: 8 per "
        "recipe, seed 0, temperature 1, 512 new tokens (the VAE: one line each)",
        "", *[f"- {f}" for f in findings], "", *lines, "", "Server (`genforge serve`, streamed requests of "
        f"{args.serve_tokens} new tokens, closed-loop clients):", "", *serve_lines, "",
        "A sample of the best recipe (seed 0):", "", "```", (best or {}).get("sample", ""), "```", "", MARK_END])
    print(section)
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", section, (MARK_START, MARK_END))


if __name__ == "__main__":
    main()
