#!/usr/bin/env python3
"""bench/run's report: medians over rounds of oha's JSON, ratios, extras and the targets.

Usage: report.py RESULTS_DIR ROUNDS SECS CONCURRENCY. Exits 1 when any run had an error (a
non-2xx status or a transport error), so a smoke run in CI fails loudly.
"""
import glob
import json
import os
import statistics
import sys

out, rounds, secs, conc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ORDER = ["direct", "signproxy-tiktok", "signproxy-ebay", "signproxy-connect", "nginx", "mitmdump", "baseline-tiktok"]
LABEL = {
    "direct": "direct to the TLS upstream",
    "signproxy-tiktok": "signproxy, TikTok signing, HTTP_PROXY",
    "signproxy-ebay": "signproxy, eBay Ed25519 POST 1 KiB",
    "signproxy-connect": "signproxy, TikTok via CONNECT interception",
    "nginx": "nginx as a TLS-originating proxy, no signing",
    "mitmdump": "mitmdump with a TikTok HMAC addon",
    "baseline-tiktok": "baseline build (BENCH_BASELINE), TikTok signing",
}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def errors(run):
    """Non-2xx answers plus transport errors; a run that produced nothing counts as one."""
    if not run.get("summary"):
        return 1
    bad = sum(n for code, n in run.get("statusCodeDistribution", {}).items() if not code.startswith("2"))
    # Requests still in flight when a timed run ends are cut by oha itself: not the proxy's.
    cut = {"aborted due to deadline"}
    return bad + sum(n for e, n in run.get("errorDistribution", {}).items() if e not in cut)


def stats(runs):
    def median(pick):
        values = [pick(r) for r in runs if r.get("summary")]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    return {
        "rps": median(lambda r: r["summary"].get("requestsPerSec")),
        "p50": median(lambda r: r.get("latencyPercentiles", {}).get("p50")),
        "p99": median(lambda r: r.get("latencyPercentiles", {}).get("p99")),
        "p999": median(lambda r: r.get("latencyPercentiles", {}).get("p99.9")),
        "errors": sum(errors(r) for r in runs),
        "rounds": [r["summary"].get("requestsPerSec") for r in runs if r.get("summary")],
    }


def ms(seconds):
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


results = {}
for variant in ORDER:
    runs = [load(p) for p in sorted(glob.glob(os.path.join(out, f"r[0-9]*-{variant}.json")))]
    if runs:
        results[variant] = stats(runs)

direct = results.get("direct", {}).get("rps")
print(f"{rounds} alternating rounds of {secs} s at {conc} connections; medians\n")
print("| variant | req/s | vs direct | p50 | p99 | p99.9 | errors | per round |")
print("|---|---|---|---|---|---|---|---|")
for variant, s in results.items():
    rps = s["rps"] or 0
    ratio = f"{rps / direct:.2f}" if direct else "-"
    per_round = ", ".join(f"{x:.0f}" for x in s["rounds"])
    print(f"| {LABEL[variant]} | {rps:,.0f} | {ratio} | {ms(s['p50'])} | {ms(s['p99'])} | {ms(s['p999'])} | {s['errors']} | {per_round} |")


def ratio(a, b):
    x, y = results.get(a, {}).get("rps"), results.get(b, {}).get("rps")
    return x / y if x and y else None


def per_round_ratio(a, b):
    """The median of the per-round ratios: robust to a round that was slow for both."""
    xs, ys = results.get(a, {}).get("rounds", []), results.get(b, {}).get("rounds", [])
    pairs = [x / y for x, y in zip(xs, ys) if x and y]
    return statistics.median(pairs) if pairs else None


print("\n| ratio | value | target |")
print("|---|---|---|")
checks = []


def check(name, value, target, ok):
    shown = "-" if value is None else f"{value:.2f}"
    verdict = "skipped" if value is None else ("met" if ok(value) else "MISSED")
    checks.append(verdict)
    print(f"| {name} | {shown} | {target} ({verdict}) |")


check("signproxy TikTok / nginx (median of per-round ratios)", per_round_ratio("signproxy-tiktok", "nginx"), ">= 1.0", lambda v: v >= 1.0)
check("signproxy TikTok / mitmdump", ratio("signproxy-tiktok", "mitmdump"), ">= 50", lambda v: v >= 50)
p99_ours, p99_nginx = results.get("signproxy-tiktok", {}).get("p99"), results.get("nginx", {}).get("p99")
check("p99 signproxy TikTok / p99 nginx", p99_ours / p99_nginx if p99_ours and p99_nginx else None, "<= 1.0", lambda v: v <= 1.0)
check("CONNECT / absolute-form", ratio("signproxy-connect", "signproxy-tiktok"), ">= 0.9", lambda v: v >= 0.9)
if "baseline-tiktok" in results:
    value = per_round_ratio("signproxy-tiktok", "baseline-tiktok")
    print(f"| this build / baseline build, TikTok (median of per-round ratios) | {value:.2f} | (information) |" if value else "")
check("eBay Ed25519 / TikTok", ratio("signproxy-ebay", "signproxy-tiktok"), ">= 0.8", lambda v: v >= 0.8)

extras = {}
try:
    with open(os.path.join(out, "extras.txt")) as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if value:
                extras[key] = value
except OSError:
    pass

extra_errors = 0
for name in ["big-post", "warmup"] + ["million"] + [os.path.basename(p)[:-5] for p in glob.glob(os.path.join(out, "conns-*.json"))]:
    path = os.path.join(out, f"{name}.json")
    if os.path.exists(path):
        extra_errors += errors(load(path))

if extras or os.path.exists(os.path.join(out, "big-post.json")):
    print("\n| extra | value |")
    print("|---|---|")
    big = load(os.path.join(out, "big-post.json"))
    if big.get("summary"):
        rps = big["summary"].get("requestsPerSec") or 0
        print(f"| 1 MiB signed POST (8 connections) | {rps:,.1f} req/s = {rps:,.1f} MiB/s, p99 {ms(big.get('latencyPercentiles', {}).get('p99'))} |")
    for key, value in sorted(extras.items()):
        if key.startswith("peak_rss_kib_"):
            conns = key.rsplit("_", 1)[1]
            mib = int(value) / 1024
            limit = 100 if conns == "1000" else 400 if conns == "10000" else None
            run = load(os.path.join(out, f"conns-{conns}.json"))
            rps = (run.get("summary") or {}).get("requestsPerSec") or 0
            target = f" (target < {limit} MiB: {'met' if mib < limit else 'MISSED'})" if limit else ""
            if limit:
                checks.append("met" if mib < limit else "MISSED")
            print(f"| peak RSS at {int(conns):,} connections | {mib:.1f} MiB at {rps:,.0f} req/s, {errors(run)} errors{target} |")
    if "rss_before_kib" in extras and "rss_after_kib" in extras:
        before, after = int(extras["rss_before_kib"]), int(extras["rss_after_kib"])
        growth = (after - before) / before * 100
        n = int(extras.get("million_requests", "0"))
        checks.append("met" if growth < 5 else "MISSED")
        steps = " -> ".join(f"{int(k) / 1024:.1f}" for k in extras.get("rss_steps_kib", "").split())
        print(f"| RSS over {n:,} requests | {before / 1024:.1f} -> {after / 1024:.1f} MiB ({growth:+.2f}%; target < 5%: {'met' if growth < 5 else 'MISSED'}); sampled at each quarter of the run: {steps} MiB |")
    if "start_to_listen_ms" in extras:
        print(f"| start to listening (median of 5) | {extras['start_to_listen_ms']} ms |")

total_errors = sum(s["errors"] for s in results.values()) + extra_errors
print(f"\nerrors in all runs: {total_errors}")
print(f"targets: {checks.count('met')} met, {checks.count('MISSED')} missed, {checks.count('skipped')} skipped")
sys.exit(1 if total_errors else 0)
