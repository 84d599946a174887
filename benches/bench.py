#!/usr/bin/env python3
"""twinroute benchmark: the same wrk load against each target, all started in one run on loopback.

Targets
  direct     wrk straight to the mock provider (`twinroute mock`, a hyper server)
  floor      a minimal Pingora pass-through (examples/floor.rs), same thread count: Pingora's cost
  twinroute  the real binary, two providers on the mock
  peer       LiteLLM proxy with a two-deployment fallback on the same mock (BENCH_LITELLM=1)
and for the failover workload: twinroute with a dead first provider (connections refused, breaker
open after warm-up) against twinroute with that provider removed, interleaved several times.

Workloads: non-streaming chat completions with 1 KB, 64 KB and 1 MB bodies; SSE streams (100
chunks 30 ms apart) at 100, 1,000 and 5,000 concurrent streams; the failover pair above.

    bash benches/run.sh                   # full run (~8 min after the build)
    BENCH_LITELLM=1 bash benches/run.sh   # plus the LiteLLM peer (installs it in .cache/)
    BENCH_SMOKE=1 python3 benches/bench.py  # ~20 s: every target answers, zero errors, or exit 1

Writes bench-results/results.json, results.md and latency.svg (copied to benches/latency.svg on a
full run). Every ratio is computed from numbers measured in the same run.
"""
import json, os, re, resource, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("BENCH_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET_DIR, "release", "twinroute")
FLOOR = os.path.join(TARGET_DIR, "release", "examples", "floor")
SMOKE = os.environ.get("BENCH_SMOKE") == "1" or "--smoke" in sys.argv
LITELLM = (os.environ.get("BENCH_LITELLM") == "1" or "--litellm" in sys.argv) and not SMOKE
LITELLM_VERSION = os.environ.get("BENCH_LITELLM_VERSION", "1.106.2")
DURATION = os.environ.get("BENCH_DURATION", "1s" if SMOKE else "6s")
SSE_DURATION = "2s" if SMOKE else "15s"
CONNS = 8 if SMOKE else int(os.environ.get("BENCH_CONNECTIONS", "32"))
THREADS = 2
# 100 chunks 30 ms apart (3 s streams): 5,000 of them is ~170k chunks/s through one 2-core box.
SSE_CHUNKS, SSE_INTERVAL_MS = (5, 2) if SMOKE else (100, 30)
SSE_LEVELS = [20] if SMOKE else [100, 1000, 5000]
BODIES = [("1KB", 1024, CONNS)] if SMOKE else [("1KB", 1024, CONNS), ("64KB", 64 * 1024, CONNS), ("1MB", 1024 * 1024, 8)]
FAILOVER_ROUNDS = 1 if SMOKE else 3
BODY_ROUNDS = 1 if SMOKE else 3
# Every target gets the same Authorization header; only LiteLLM checks it (it refuses to start
# without a master key). twinroute and the floor drop or ignore it.
MASTER_KEY = "sk-bench-0123456789abcdef"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def tree_rss_mb(pid):
    """RSS of a process and all its descendants (LiteLLM runs workers), in MB."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            pass
    return total / 1024


class RssSampler:
    """Peak RSS of a process tree while a load runs (sampled every 50 ms)."""
    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid)); time.sleep(0.05)

    def __enter__(self):
        if self.pid:
            self.t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        if self.pid:
            self.t.join(); self.peak = max(self.peak, tree_rss_mb(self.pid))


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    n, u = float(m.group(1)), m.group(2)
    return {"us": n / 1000, "ms": n, "s": n * 1000, "m": n * 60000}[u]


def wrk(url, body_file, conns, duration, timeout="10s"):
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write(f'''wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {MASTER_KEY}"
local f = io.open("{body_file}", "rb"); wrk.body = f:read("*all"); f:close()
''')
    lua.close()
    out = subprocess.run(["wrk", "-t", str(THREADS), "-c", str(conns), "-d", duration, "--timeout", timeout,
                          "--latency", "-s", lua.name, url], capture_output=True, text=True).stdout
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not rps or "50" not in lat:
        return {"rps": 0.0, "requests": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None,
                "non_2xx": 0, "socket_errors": 1, "raw": out[-500:]}
    return {"rps": float(rps.group(1)), "requests": int(total.group(1)) if total else 0,
            "p50_ms": to_ms(lat["50"]), "p90_ms": to_ms(lat["90"]), "p99_ms": to_ms(lat["99"]),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0}


def median_of(runs):
    """Per-field medians of several wrk results; errors are summed, RSS is the peak."""
    out = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")
           if all(r.get(k) is not None for r in runs)}
    out["requests"] = sum(r["requests"] for r in runs)
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    out["socket_errors"] = sum(r["socket_errors"] for r in runs)
    rss = [r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb")]
    out["peak_rss_mb"] = max(rss) if rss else None
    out["runs"] = len(runs)
    return out


def chat_body(size, stream=False):
    filler = "x" * max(0, size - 100)
    b = {"messages": [{"role": "user", "content": filler}], "model": "m", "max_tokens": 16}
    if stream:
        b["stream"] = True
    return json.dumps(b)


def twinroute_conf(listen, admin, providers):
    prov = "".join(f'  - {{name: {n}, api: openai, base_url: "{u}", timeouts: {{connect_ms: 3000, first_byte_ms: 10000}}, breaker: {{failures: 1, cooldown_ms: 600000}}}}\n' for n, u in providers)
    offers = "".join(f"      - {{provider: {n}, model: {n}-m}}\n" for n, _ in providers)
    return (f'listen: "127.0.0.1:{listen}"\nadmin_listen: "127.0.0.1:{admin}"\nthreads: {THREADS}\n'
            f'max_concurrent_requests: 20000\nproviders:\n{prov}models:\n  - name: m\n    offerings:\n{offers}')


def litellm_install():
    venv = os.path.join(ROOT, ".cache", "bench-litellm")
    exe = os.path.join(venv, "bin", "litellm")
    if not os.path.exists(exe):
        print("installing LiteLLM proxy into .cache/bench-litellm (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        spec = f"litellm[proxy]=={LITELLM_VERSION}" if LITELLM_VERSION else "litellm[proxy]"
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", spec], check=True)
    ver = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True).stdout.strip()
    return exe, ver


def svg_plot(results, workloads, targets, path):
    """Grouped bars, p50/p90/p99 per target, one panel per workload, log-scale milliseconds."""
    import math
    colors = {"p50_ms": "#4e79a7", "p90_ms": "#f28e2b", "p99_ms": "#e15759"}
    pw, ph, left, top = 560, 220, 70, 40
    cols = 2
    rows = (len(workloads) + cols - 1) // cols
    W, H = cols * (pw + 20) + 20, rows * (ph + 80) + 60
    vals = [results[w][t][k] for w in workloads for t in targets if t in results.get(w, {})
            for k in colors if results[w][t].get(k)]
    lo = 10 ** math.floor(math.log10(max(min(vals), 0.01)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    y = lambda v: top + ph - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15">twinroute benchmark: latency percentiles (ms, log scale), one run, loopback, 2 cores</text>']
    for i, w in enumerate(workloads):
        ox, oy = 20 + (i % cols) * (pw + 20), 40 + (i // cols) * (ph + 80)
        out.append(f'<g transform="translate({ox},{oy})">')
        out.append(f'<text x="{pw/2}" y="20" text-anchor="middle" font-size="13" font-weight="bold">{w}</text>')
        d = 1
        while d <= hi:
            if d >= lo:
                out.append(f'<line x1="{left}" x2="{pw-10}" y1="{y(d):.1f}" y2="{y(d):.1f}" stroke="#ddd"/>')
                out.append(f'<text x="{left-6}" y="{y(d)+4:.1f}" text-anchor="end">{d:g}</text>')
            d *= 10
        if lo < 1:
            out.append(f'<line x1="{left}" x2="{pw-10}" y1="{y(lo):.1f}" y2="{y(lo):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{left-6}" y="{y(lo)+4:.1f}" text-anchor="end">{lo:g}</text>')
        ts = [t for t in targets if t in results.get(w, {}) and results[w][t].get("p50_ms")]
        gw = (pw - left - 20) / max(len(ts), 1)
        for j, t in enumerate(ts):
            gx = left + 10 + j * gw
            for k, (key, c) in enumerate(colors.items()):
                v = results[w][t][key]
                bx = gx + 6 + k * (gw - 12) / 3
                out.append(f'<rect x="{bx:.1f}" y="{y(v):.1f}" width="{(gw-12)/3-2:.1f}" height="{top+ph-y(v):.1f}" fill="{c}"><title>{t} {key[:3]} {v:.3f} ms</title></rect>')
            label = t.replace("twinroute_", "tw ")
            out.append(f'<text x="{gx+gw/2:.1f}" y="{top+ph+16}" text-anchor="middle">{label}</text>')
        out.append('</g>')
    lx = W / 2 - 120
    for k, (key, c) in enumerate(colors.items()):
        out.append(f'<rect x="{lx + k*90}" y="{H-24}" width="12" height="12" fill="{c}"/><text x="{lx + k*90 + 16}" y="{H-14}">{key[:3]}</text>')
    out.append('</svg>')
    open(path, "w").write("\n".join(out))


def main():
    started = time.time()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    procs, results, notes = [], {}, []
    tmp = tempfile.mkdtemp(prefix="twinroute-bench-")
    logs = {}

    def spawn(name, args, env=None):
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        logs[name] = log.name
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "RUST_LOG": "warn", **(env or {})})
        procs.append(p); return p

    try:
        load_before = os.getloadavg()[0]
        mock_port = free_port()
        spawn("mock", [BIN, "mock", "--listen", f"127.0.0.1:{mock_port}", "--name", "mock",
                       "--sse-chunks", str(SSE_CHUNKS), "--sse-interval-ms", str(SSE_INTERVAL_MS)])
        wait_port(mock_port)
        mock = f"http://127.0.0.1:{mock_port}"
        floor_port = free_port()
        floor = spawn("floor", [FLOOR, f"127.0.0.1:{floor_port}", f"127.0.0.1:{mock_port}", str(THREADS)])
        wait_port(floor_port)
        dead = free_port()  # nothing listens here: connection refused
        targets = {}
        for name, providers in [("twinroute", [("a", mock), ("b", mock)]),
                                ("twinroute_one_provider", [("b", mock)]),
                                ("twinroute_dead_first", [("dead", f"http://127.0.0.1:{dead}"), ("b", mock)])]:
            port, admin = free_port(), free_port()
            conf = os.path.join(tmp, f"{name}.yaml")
            open(conf, "w").write(twinroute_conf(port, admin, providers))
            targets[name] = (spawn(name, [BIN, "run", "--config", conf]), port)
            wait_port(port)
        peer = None
        if LITELLM:
            exe, ver = litellm_install()
            port = free_port()
            conf = os.path.join(tmp, "litellm.yaml")
            open(conf, "w").write(
                "model_list:\n"
                f"  - model_name: m\n    litellm_params: {{model: openai/a-m, api_base: '{mock}/v1', api_key: sk-bench}}\n"
                f"  - model_name: m\n    litellm_params: {{model: openai/b-m, api_base: '{mock}/v1', api_key: sk-bench}}\n"
                "router_settings: {num_retries: 1}\nlitellm_settings: {telemetry: false, set_verbose: false}\n")
            peer = (spawn("litellm", [exe, "--config", conf, "--port", str(port), "--host", "127.0.0.1"],
                          env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true",
                               "LITELLM_MASTER_KEY": MASTER_KEY}), port)
            end = time.time() + 180
            while True:
                if peer[0].poll() is not None:
                    raise RuntimeError(f"LiteLLM exited at start; see {logs['litellm']}")
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close(); break
                except OSError:
                    if time.time() > end:
                        raise RuntimeError("LiteLLM never listened")
                    time.sleep(0.2)
            notes.append(f"peer: LiteLLM {ver} proxy, one process (its default), router with two deployments of the same model")
        time.sleep(1.0)
        idle_rss = tree_rss_mb(targets["twinroute"][0].pid)
        # Open the dead provider's breaker (failures: 1) before anything is measured.
        for _ in range(3):
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "content-type: application/json",
                            "--data-binary", chat_body(200), f"http://127.0.0.1:{targets['twinroute_dead_first'][1]}/v1/chat/completions"])

        def measure(label, tname, url, pid, bf, conns, duration, timeout="10s"):
            with RssSampler(pid) as s:
                r = wrk(url, bf, conns, duration, timeout)
            r["peak_rss_mb"] = round(s.peak, 1) if pid else None
            results.setdefault(label, {})[tname] = r
            p = lambda v: f"{v:.3f}" if v is not None else "-"
            print(f"  {label:10} {tname:24} {r['rps']:9.0f} req/s  p50 {p(r['p50_ms'])} ms  p99 {p(r['p99_ms'])} ms"
                  f"  errors {r['non_2xx'] + r['socket_errors']}  rss {r['peak_rss_mb']}", file=sys.stderr)
            return r

        main_targets = [("direct", f"{mock}/v1/chat/completions", None),
                        ("floor", f"http://127.0.0.1:{floor_port}/v1/chat/completions", floor.pid),
                        ("twinroute", f"http://127.0.0.1:{targets['twinroute'][1]}/v1/chat/completions", targets["twinroute"][0].pid)]
        if peer:
            main_targets.append(("peer", f"http://127.0.0.1:{peer[1]}/v1/chat/completions", peer[0].pid))

        # Non-streaming bodies: the proxies' numbers on a shared 2-core box swing by ±20 % run to
        # run, so each target runs BODY_ROUNDS times, interleaved, and the medians are reported.
        for label, size, conns in BODIES:
            bf = os.path.join(tmp, f"body-{label}.json"); open(bf, "w").write(chat_body(size))
            per = {}
            for i in range(BODY_ROUNDS):
                for tname, url, pid in main_targets:
                    if tname == "peer" and (label != "1KB" or i > 0):
                        continue
                    r = measure(f"{label} #{i+1}", tname, url, pid, bf, conns, DURATION)
                    per.setdefault(tname, []).append(r)
            for i in range(BODY_ROUNDS):
                results.pop(f"{label} #{i+1}", None)
            results[label] = {t: median_of(rs) for t, rs in per.items()}

        # SSE streams: one request per connection is one whole stream; latency is stream time.
        sse_bf = os.path.join(tmp, "body-sse.json"); open(sse_bf, "w").write(chat_body(200, stream=True))
        for n in SSE_LEVELS:
            label = f"SSE x{n}"
            for tname, url, pid in main_targets:
                if tname == "peer" and n > 100:
                    continue
                measure(label, tname, url, pid, sse_bf, n, SSE_DURATION, timeout="60s")
        broken_streams = sum(1 for l in open(logs["twinroute"]) if "mid-body" in l)

        # Failover pair, interleaved so both see the same machine state; medians of p99.
        bf = os.path.join(tmp, "body-1KB.json")
        if not os.path.exists(bf):
            open(bf, "w").write(chat_body(1024))
        rounds = {"twinroute_one_provider": [], "twinroute_dead_first": []}
        for i in range(FAILOVER_ROUNDS):
            for tname in rounds:
                pr, port = targets[tname]
                r = measure(f"failover #{i+1}", tname, f"http://127.0.0.1:{port}/v1/chat/completions", pr.pid, bf, CONNS, DURATION)
                rounds[tname].append(r)
        fo = {t: {**median_of(rs), "p99_runs_ms": [r["p99_ms"] for r in rs]} for t, rs in rounds.items()}
        for i in range(FAILOVER_ROUNDS):
            results.pop(f"failover #{i+1}", None)
        results["failover (median)"] = fo

        # ---- ratios from this run ----
        r1 = results["1KB"]
        ratios = {
            "1KB twinroute/floor throughput": r1["twinroute"]["rps"] / r1["floor"]["rps"],
            "1KB added p50 over direct, twinroute (ms)": r1["twinroute"]["p50_ms"] - r1["direct"]["p50_ms"],
            "1KB added p50 over direct, floor (ms)": r1["floor"]["p50_ms"] - r1["direct"]["p50_ms"],
            "failover dead-first p99 / one-provider p99 (medians)": fo["twinroute_dead_first"]["p99_ms"] / fo["twinroute_one_provider"]["p99_ms"],
            "idle RSS (MB)": idle_rss,
        }
        if "64KB" in results:
            ratios["64KB twinroute/floor throughput"] = results["64KB"]["twinroute"]["rps"] / results["64KB"]["floor"]["rps"]
        if "1MB" in results:
            ratios["1MB added p50 over direct, twinroute (ms)"] = results["1MB"]["twinroute"]["p50_ms"] - results["1MB"]["direct"]["p50_ms"]
        top = f"SSE x{SSE_LEVELS[-1]}"
        ratios[f"{top} twinroute errors (non-2xx + socket)"] = results[top]["twinroute"]["non_2xx"] + results[top]["twinroute"]["socket_errors"]
        ratios[f"{top} twinroute peak RSS (MB)"] = results[top]["twinroute"]["peak_rss_mb"]
        ratios["streams broken mid-way (twinroute log)"] = broken_streams
        if peer:
            p1 = r1["peer"]
            ratios["1KB twinroute/peer throughput"] = r1["twinroute"]["rps"] / p1["rps"] if p1["rps"] else None
            ratios["1KB peer p50 / twinroute p50"] = p1["p50_ms"] / r1["twinroute"]["p50_ms"] if p1["p50_ms"] else None
            ratios["1KB peer peak RSS / twinroute peak RSS"] = p1["peak_rss_mb"] / r1["twinroute"]["peak_rss_mb"] if p1["peak_rss_mb"] else None

        load_after = os.getloadavg()[0]
        total_s = time.time() - started
        out = {"smoke": SMOKE, "duration": DURATION, "sse_duration": SSE_DURATION, "connections": CONNS, "threads": THREADS,
               "sse": {"chunks": SSE_CHUNKS, "interval_ms": SSE_INTERVAL_MS}, "idle_rss_mb": idle_rss,
               "results": results, "ratios": ratios, "notes": notes, "total_seconds": round(total_s),
               "load_avg_before_after": [load_before, load_after]}
        res_dir = os.path.join(ROOT, "bench-results")
        os.makedirs(res_dir, exist_ok=True)
        json.dump(out, open(os.path.join(res_dir, "results.json"), "w"), indent=2)

        lines = [f"wrk -t{THREADS}, non-streaming: -c{CONNS} (1 MB: -c8) -d{DURATION}, medians of {BODY_ROUNDS} interleaved rounds; SSE: {SSE_CHUNKS} chunks {SSE_INTERVAL_MS} ms apart, "
                 f"-c = concurrent streams, -d{SSE_DURATION}; failover pair interleaved {FAILOVER_ROUNDS}x. All on loopback, 2 cores.", "",
                 "| workload | target | req/s | p50 ms | p90 ms | p99 ms | errors | peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for w, ts in results.items():
            for t, r in ts.items():
                errs = r.get("non_2xx", 0) + r.get("socket_errors", 0)
                f = lambda v: f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))
                lines.append(f"| {w} | {t} | {r['rps']:.0f} | {f(r['p50_ms'])} | {f(r['p90_ms'])} | {f(r['p99_ms'])} | {errs} | {f(r.get('peak_rss_mb'))} |")
        lines += ["", "| ratio (same run) | value |", "|---|---:|"]
        for k, v in ratios.items():
            lines.append(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
        lines += ["", f"one-provider p99 per round: {fo['twinroute_one_provider']['p99_runs_ms']} ms; "
                      f"dead-first: {fo['twinroute_dead_first']['p99_runs_ms']} ms",
                  f"load average before/after: {load_before:.2f} / {load_after:.2f}; total {total_s:.0f} s"] + notes
        md = "\n".join(lines) + "\n"
        open(os.path.join(res_dir, "results.md"), "w").write(md)
        print(md)
        workloads = [w for w in results if not w.startswith("failover #")]
        svg = os.path.join(res_dir, "latency.svg")
        svg_plot(results, workloads, ["direct", "floor", "twinroute", "peer", "twinroute_one_provider", "twinroute_dead_first"], svg)
        if not SMOKE:
            shutil.copy(svg, os.path.join(ROOT, "benches", "latency.svg"))

        if SMOKE:
            bad = [(w, t) for w, ts in results.items() for t, r in ts.items()
                   if "non_2xx" in r and (r["requests"] == 0 or r["non_2xx"] or r["socket_errors"])]
            if bad or broken_streams:
                print(f"smoke FAILED: {bad} broken={broken_streams}", file=sys.stderr)
                sys.exit(1)
            print(f"smoke OK: every target answered with zero errors ({total_s:.0f} s)", file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
