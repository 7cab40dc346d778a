#!/usr/bin/env python3
"""Side-by-side loss benchmark: rkd-orch's losses against the PyTorch reference formulations.

Runs `rkd-orch loss bench --json` (one fresh process per loss and N, so that its peak memory
is its own) and `../shared/bench/torch_losses.py` on the same sizes and thread count, then
prints a Markdown table with both medians and their ratio.

  python3 scripts/bench_losses.py --torch-python /path/to/venv/bin/python3 \
      --threads 2 --n 64 128 256 512 1024 --dim 512

Needs a release build (`cargo build --release`) and, for the PyTorch side, a Python with
torch (`pip install torch numpy`).
"""
import argparse, json, os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "rkd-orch")
TORCH_SCRIPT = os.path.join(ROOT, "..", "shared", "bench", "torch_losses.py")
LOSSES = ["rkd_distance", "rkd_angle", "sp", "cc"]


def ours(loss, n, dim, threads, repeat):
    out = subprocess.run(
        [BIN, "loss", "bench", "--loss", loss, "--n", str(n), "--dim", str(dim),
         "--threads", str(threads), "--repeat", str(repeat), "--json"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--loss", nargs="+", default=LOSSES)
    ap.add_argument("--json", help="also write all rows here")
    a = ap.parse_args()

    rows = {}
    for loss in a.loss:
        for n in a.n:
            rows[(loss, n)] = {"ours": ours(loss, n, a.dim, a.threads, a.repeat)}
            print(f"rkd-orch {loss} N={n}: {rows[(loss, n)]['ours']['median_ms']:.2f} ms",
                  file=sys.stderr)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        torch_json = f.name
    env = dict(os.environ)
    subprocess.run(
        [a.torch_python, TORCH_SCRIPT, "--threads", str(a.threads), "--dim", str(a.dim),
         "--repeat", str(a.repeat), "--n", *map(str, a.n), "--loss", *a.loss,
         "--json", torch_json],
        check=True, env=env, stdout=sys.stderr)
    with open(torch_json) as f:
        torch_out = json.load(f)
    for r in torch_out["rows"]:
        rows[(r["loss"], r["n"])]["torch"] = r

    print(f"threads={a.threads}, D={a.dim}, float32, median of {a.repeat} after a warm-up; "
          f"torch {torch_out['torch']}\n")
    print("| loss | N | rkd-orch ms | PyTorch ms | speed-up | rkd-orch peak RSS MiB | PyTorch RSS growth MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (loss, n), r in rows.items():
        o, t = r["ours"], r.get("torch")
        tm = t["median_ms"] if t else float("nan")
        print(f"| {loss} | {n} | {o['median_ms']:.2f} | {tm:.2f} | {tm / o['median_ms']:.1f}× "
              f"| {o['peak_rss_mib']:.0f} | {t['peak_rss_growth_mib'] if t else float('nan'):.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"loss": k[0], "n": k[1], **v} for k, v in rows.items()], f, indent=1)


if __name__ == "__main__":
    main()
