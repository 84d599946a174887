#!/usr/bin/env python3
"""twinroute benchmark: the same wrk load against each target, all started in one run on loopback.

Targets
  direct     wrk straight to the mock provider (`twinroute mock`, a hyper server)
  floor      a minimal Pingora pass-through (examples/floor.rs), same thread count: Pingora's cost
  twinroute  the real binary, two providers on the mock
  peer       LiteLLM proxy with a two-deployment fallback on the same mock (--litellm)
and for the failover workload: twinroute with a dead first provider (connections refused, breaker
open after warm-up) against twinroute with that provider removed, interleaved A B A B ...

Workloads
  1KB / 64KB / 1MB   non-streaming chat completions (1 MB with 8 connections, the rest 32),
                     BODY_ROUNDS interleaved rounds per target, medians reported
  SSE xN             N concurrent streams (one wrk connection = one stream at a time), each
                     200 chunks 10 ms apart; latency is whole-stream time. "broken" = non-2xx +
                     socket read errors + timeouts + 200 bodies without `data: [DONE]` (checked by
                     a wrk Lua hook); twinroute's own log and /metrics are checked too
  SSE x5000 40x250ms 5,000 streams of 40 chunks 250 ms apart (20k chunks/s): a pace two shared
                     cores can carry; the 10 ms run asks 500k chunks/s, >10x what this box moves
  failover           the pair above, FAILOVER_ROUNDS x (A B), medians of p99 and their spread

    bash benches/run.sh                     # full run, ~8 min after the build (prints its time)
    bash benches/run.sh --litellm           # plus the LiteLLM peer (installs it in .cache/)
    bash benches/run.sh --smoke             # ~12 s: every target answers, zero errors, or exit 1

Knobs (environment): BENCH_TARGET_DIR (release binaries; default target), BENCH_DURATION (per
non-streaming round, 5s), BENCH_CONNECTIONS (32), BENCH_SSE_CHUNKS (200), BENCH_SSE_INTERVAL_MS
(10), BENCH_SSE_SLOW (40x250: chunks x ms of the second 5,000-stream run; 0 skips it),
BENCH_LITELLM=1, BENCH_SMOKE=1, BENCH_LITELLM_VERSION (1.106.2), BENCH_TWINROUTE_LOG (twinroute's
RUST_LOG; unset = its default level, info, one access line per request, as users run it); run.sh
adds BENCH_NO_BUILD=1.

Writes bench-results/results.json, results.md and latency.svg (a full run also copies the plot
to benches/latency.svg). Every ratio is computed from numbers measured in this run.
"""
import json, math, os, re, resource, shutil, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("BENCH_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET_DIR, "release", "twinroute")
FLOOR = os.path.join(TARGET_DIR, "release", "examples", "floor")
SMOKE = os.environ.get("BENCH_SMOKE") == "1" or "--smoke" in sys.argv
LITELLM = (os.environ.get("BENCH_LITELLM") == "1" or "--litellm" in sys.argv) and not SMOKE
LITELLM_VERSION = os.environ.get("BENCH_LITELLM_VERSION", "1.106.2")
THREADS = 2
DURATION = os.environ.get("BENCH_DURATION", "1s" if SMOKE else "5s")
CONNS = 8 if SMOKE else int(os.environ.get("BENCH_CONNECTIONS", "32"))
BODY_ROUNDS = 1 if SMOKE else 3
FAILOVER_ROUNDS = 1 if SMOKE else 7
FAILOVER_DURATION = "1s" if SMOKE else "5s"
SSE_CHUNKS = 5 if SMOKE else int(os.environ.get("BENCH_SSE_CHUNKS", "200"))
SSE_INTERVAL_MS = 2 if SMOKE else int(os.environ.get("BENCH_SSE_INTERVAL_MS", "10"))
STREAM_S = SSE_CHUNKS * SSE_INTERVAL_MS / 1000
# (concurrent streams, wrk -d). wrk only counts streams that finish inside -d, so -d must exceed
# the stream time at that concurrency: 5,000 streams x 100 chunks/s ask for 500k chunks/s, which
# two shared cores deliver at ~45-55k/s, so each stream there takes ~20 s instead of 2 s.
SSE_LEVELS = [(20, "1s")] if SMOKE else [(100, "8s"), (1000, "12s"), (5000, "35s")]
# The second 5,000-stream run, at a pace the box can carry (chunks x ms; "0" skips it).
SSE_SLOW = "0" if SMOKE else os.environ.get("BENCH_SSE_SLOW", "40x250")
SSE_SLOW_CHUNKS, SSE_SLOW_MS = (int(x) for x in SSE_SLOW.split("x")) if SSE_SLOW != "0" else (0, 0)
SSE_SLOW_DURATION = "25s"
# LiteLLM moves ~1,000-1,600 chunks/s here, so its 100 streams of 200 chunks take 15-30 s each.
PEER_SSE_DURATION = "60s"
# (label, body bytes, connections). "1KB c1" is one client: the per-request latency a proxy adds
# when nothing queues, which -c32 hides behind queueing on two cores.
if SMOKE:
    BODIES = [("1KB", 1024, CONNS), ("1KB c1", 1024, 1)]
else:
    BODIES = [("1KB", 1024, CONNS), ("1KB c1", 1024, 1), ("64KB", 64 * 1024, CONNS), ("1MB", 1024 * 1024, 8)]
# twinroute's log level in every run (None: RUST_LOG unset, its default).
TW_LOG = os.environ.get("BENCH_TWINROUTE_LOG")
TW_LOG_SHOWN = f"RUST_LOG={TW_LOG}" if TW_LOG else "the default level (info: one access line per request, to a file)"
# How long after the 5,000-stream loads their RSS is read again (the target: <= 2x idle by then).
RSS_SETTLE_S = 30
# Every target gets the same Authorization header; only LiteLLM checks it (it refuses to start
# without a master key). twinroute and the floor drop or ignore it.
MASTER_KEY = "sk-bench-0123456789abcdef"
CLK = os.sysconf("SC_CLK_TCK")


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


def tree_pids(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            pass
    return out


def tree_rss_mb(pid):
    """RSS of a process and all its descendants (LiteLLM may run workers), in MB."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def tree_cpu_s(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK


class CpuMeter:
    """CPU used during a stage by everybody else on the machine (the other processes' user +
    system time, including children they reaped, e.g. cargo's rustc), so a reader can tell
    whether the box was shared while it was measured. Ours (this script, wrk, the mock, the
    proxies) and kernel threads (softirq networking) are left out; hypervisor steal is apart."""
    def __init__(self):
        self.stages = {}

    @staticmethod
    def snapshot():
        ours = set(tree_pids(os.getpid()))
        per = {}
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) in ours:
                continue
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if f[1] in ("0", "2") or int(d) == 2:  # kernel threads
                continue
            per[int(d)] = sum(int(x) for x in f[11:15]) / CLK
        steal = int(open("/proc/stat").readline().split()[8]) / CLK
        return time.time(), per, steal

    def stage(self, name):
        meter = self

        class Stage:
            def __enter__(self):
                self.a = meter.snapshot(); return self

            def __exit__(self, *exc):
                b = meter.snapshot()
                wall = b[0] - self.a[0]
                other = sum(v - self.a[1].get(p, 0.0) for p, v in b[1].items())
                meter.stages[name] = {"wall_s": round(wall, 1), "other_cpu_s": round(other, 1),
                                      "other_cores": round(other / wall, 2) if wall else 0,
                                      "steal_s": round(b[2] - self.a[2], 1)}
        return Stage()


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
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", v)
    n, u = float(m.group(1)), m.group(2)
    return {"us": n / 1000, "ms": n, "s": n * 1000, "m": n * 60000, "h": n * 3600000}[u]


ERROR_FIELDS = ("non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts", "bad_bodies")


def wrk(url, body_file, conns, duration, timeout="10s", check_sse=False):
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write(f'''wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {MASTER_KEY}"
local f = io.open("{body_file}", "rb"); wrk.body = f:read("*all"); f:close()
''')
    if check_sse:
        # A 200 stream that does not end with the [DONE] marker, or carries twinroute's
        # upstream_stream_broken event, is a broken stream even though its status was fine.
        lua.write('''local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status == 200 and (not string.find(body, "data: [DONE]", 1, true)
                        or string.find(body, "upstream_stream_broken", 1, true)) then
    bad = bad + 1
  end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("bad") end
  io.write(string.format("BAD_BODIES %d\\n", n))
end
''')
    lua.close()
    out = subprocess.run(["wrk", "-t", str(min(THREADS, conns)), "-c", str(conns), "-d", duration, "--timeout", timeout,
                          "--latency", "-s", lua.name, url], capture_output=True, text=True).stdout
    os.unlink(lua.name)
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = re.search(r"BAD_BODIES (\d+)", out)
    c, r, w, t = map(int, sock.groups()) if sock else (0, 0, 0, 0)
    read_bytes_s = None
    if total:  # wrk's units are binary: 1 MB = 2^20 bytes
        secs = float(total.group(2)) * {"ms": 0.001, "s": 1, "m": 60}.get(total.group(3), 1)
        read = float(total.group(4)) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}.get(total.group(5), 1)
        read_bytes_s = read / secs if secs else None
    res = {"rps": float(rps.group(1)) if rps else 0.0, "requests": int(total.group(1)) if total else 0,
           "read_bytes_s": read_bytes_s,
           "p50_ms": None, "p90_ms": None, "p99_ms": None,
           "non_2xx": int(non2xx.group(1)) if non2xx else 0, "connect_errors": c, "read_errors": r,
           "write_errors": w, "timeouts": t, "bad_bodies": int(bad.group(1)) if bad else 0}
    if "50" in lat and res["requests"] > 0:
        res.update(p50_ms=to_ms(lat["50"]), p90_ms=to_ms(lat["90"]), p99_ms=to_ms(lat["99"]))
    if not rps or res["requests"] == 0:
        res["raw"] = out[-800:]
    return res


def errors(r):
    return sum(r.get(k, 0) for k in ERROR_FIELDS)


def broken(r):
    """What counts as a broken stream: a non-2xx status, a read error, a timeout, a bad body."""
    return r.get("non_2xx", 0) + r.get("read_errors", 0) + r.get("timeouts", 0) + r.get("bad_bodies", 0)


def median_of(runs):
    """Per-field medians of several wrk results; errors are summed, RSS is the peak."""
    out = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req")
           if all(r.get(k) is not None for r in runs)}
    for k in ("p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req"):
        out.setdefault(k, None)
    out["requests"] = sum(r["requests"] for r in runs)
    for k in ERROR_FIELDS:
        out[k] = sum(r.get(k, 0) for r in runs)
    rss = [r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb")]
    out["peak_rss_mb"] = max(rss) if rss else None
    out["runs"] = len(runs)
    out["per_round"] = [{k: r.get(k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")} for r in runs]
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


def scrape_non_2xx(admin_port):
    """twinroute's own count of answers with a non-2xx status, from /metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    return sum(float(v) for s, v in re.findall(r'^twinroute_requests_total\{[^}]*status="(\d+)"[^}]*\}\s+(\S+)', text, re.M)
               if not s.startswith("2"))


def litellm_install():
    venv = os.path.join(ROOT, ".cache", "bench-litellm")
    exe = os.path.join(venv, "bin", "litellm")
    py = os.path.join(venv, "bin", "python")
    have = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True).stdout.strip() if os.path.exists(py) else ""
    if not os.path.exists(exe) or have != LITELLM_VERSION:
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into .cache/bench-litellm ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
        have = LITELLM_VERSION
    return exe, have


LABELS = {"twinroute_one_provider": "one provider", "twinroute_dead_first": "dead first", "peer": "LiteLLM"}


def svg_plot(results, workloads, targets, path, subtitle, titles=None):
    """Grouped bars: p50/p90/p99 per target, one panel per workload, each panel on its own log
    scale (the panels span 0.1 ms to tens of seconds). Hand-written SVG, no dependencies."""
    colors = {"p50_ms": "#4e79a7", "p90_ms": "#f28e2b", "p99_ms": "#e15759"}
    pw, ph, left, top = 470, 200, 58, 34
    cols = 3
    rows = (len(workloads) + cols - 1) // cols
    W, H = cols * (pw + 16) + 16, rows * (ph + 84) + 100
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    tick = lambda v: f"{v/1000:g} s" if v >= 1000 else f"{v:g} ms"
    fmt = lambda v: f"{v/1000:.2f} s" if v >= 1000 else (f"{v:.0f} ms" if v >= 100 else (f"{v:.1f} ms" if v >= 1 else f"{v:.2f} ms"))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W/2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">twinroute benchmark: latency percentiles per workload (log scale, lower is better)</text>',
           f'<text x="{W/2}" y="42" text-anchor="middle" font-size="11" fill="#555">{esc(subtitle)}</text>']
    for i, w in enumerate(workloads):
        ox, oy = 16 + (i % cols) * (pw + 16), 56 + (i // cols) * (ph + 84)
        ts = [t for t in targets if t in results.get(w, {}) and results[w][t].get("p50_ms")]
        vals = [results[w][t][k] for t in ts for k in colors if results[w][t].get(k)]
        out.append(f'<g transform="translate({ox},{oy})">')
        out.append(f'<rect x="0" y="0" width="{pw}" height="{ph+70}" fill="none" stroke="#e4e4e4"/>')
        out.append(f'<text x="{pw/2}" y="20" text-anchor="middle" font-size="13" font-weight="bold">{esc((titles or {}).get(w, w))}</text>')
        if not vals:
            out.append('</g>'); continue
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = 10 ** math.ceil(math.log10(max(vals) * 1.05))
        if hi / lo < 100:
            lo = hi / 100
        y = lambda v: top + ph - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
        d = lo
        while d <= hi * 1.0001:
            out.append(f'<line x1="{left}" x2="{pw-8}" y1="{y(d):.1f}" y2="{y(d):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{left-5}" y="{y(d)+4:.1f}" text-anchor="end" fill="#444">{tick(d)}</text>')
            d *= 10
        gw = (pw - left - 12) / max(len(ts), 1)
        bw = min(34, (gw - 16) / 3)
        for j, t in enumerate(ts):
            gx = left + 4 + j * gw
            x0 = gx + (gw - 3 * bw) / 2
            for k, (key, c) in enumerate(colors.items()):
                v = results[w][t][key]
                out.append(f'<rect x="{x0 + k*bw:.1f}" y="{y(v):.1f}" width="{bw-2:.1f}" height="{top+ph-y(v):.1f}" fill="{c}"><title>{esc(t)} {key[:3]}: {fmt(v)}</title></rect>')
            out.append(f'<text x="{gx+gw/2:.1f}" y="{top+ph+15}" text-anchor="middle" font-weight="bold">{esc(LABELS.get(t, t))}</text>')
            r = results[w][t]
            out.append(f'<text x="{gx+gw/2:.1f}" y="{top+ph+29}" text-anchor="middle" fill="#333">p50 {fmt(r["p50_ms"])}</text>')
            out.append(f'<text x="{gx+gw/2:.1f}" y="{top+ph+42}" text-anchor="middle" fill="#333">p99 {fmt(r["p99_ms"])}</text>')
        out.append('</g>')
    lx = W / 2 - 130
    for k, (key, c) in enumerate(colors.items()):
        out.append(f'<rect x="{lx + k*95}" y="{H-30}" width="14" height="14" fill="{c}"/><text x="{lx + k*95 + 19}" y="{H-18}" font-size="12">{key[:3]}</text>')
    out.append('</svg>')
    open(path, "w").write("\n".join(out) + "\n")


def stop_all(procs):
    """SIGKILL every process this run started, with its descendants (LiteLLM's workers): a
    graceful stop would wait out twinroute's grace period for pooled connections."""
    for p in procs:
        if p.poll() is None:
            for pid in reversed(tree_pids(p.pid)):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
    for p in procs:
        p.wait()


def main():
    started = time.time()
    for exe in (BIN, FLOOR):
        if not os.access(exe, os.X_OK):
            sys.exit(f"bench: {exe} missing; build with: CARGO_TARGET_DIR={TARGET_DIR} cargo build --release --locked --bin twinroute --example floor")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    procs, results, notes, logs = [], {}, [], {}
    peer_s = [0.0]  # wall time spent on LiteLLM (install, start, its loads), reported apart
    cpu = CpuMeter()
    tmp = tempfile.mkdtemp(prefix="twinroute-bench-")

    def spawn(name, args, env=None):
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        logs[name] = log.name
        env = {**os.environ, "RUST_LOG": "warn", **(env or {})}
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                             env={k: v for k, v in env.items() if v is not None})
        procs.append(p); return p

    def log_lines(name, needle):
        return sum(1 for line in open(logs[name], errors="replace") if needle in line)

    try:
        load_before = os.getloadavg()
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
            targets[name] = (spawn(name, [BIN, "run", "--config", conf], env={"RUST_LOG": TW_LOG}), port, admin)
            wait_port(port)
        peer = None
        if LITELLM:
            t_peer = time.time()
            exe, ver = litellm_install()
            port = free_port()
            conf = os.path.join(tmp, "litellm.yaml")
            open(conf, "w").write(
                "model_list:\n"
                f"  - model_name: m\n    litellm_params: {{model: openai/a-m, api_base: '{mock}/v1', api_key: sk-bench}}\n"
                f"  - model_name: m\n    litellm_params: {{model: openai/b-m, api_base: '{mock}/v1', api_key: sk-bench}}\n"
                "router_settings: {num_retries: 1}\nlitellm_settings: {telemetry: false, set_verbose: false}\n")
            # No database (no DATABASE_URL), no telemetry, the bundled model-cost map instead of
            # fetching it from GitHub at start: nothing leaves the machine.
            peer = (spawn("litellm", [exe, "--config", conf, "--port", str(port), "--host", "127.0.0.1"],
                          env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true",
                               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": MASTER_KEY,
                               "NO_DOCS": "True", "DO_NOT_TRACK": "1"}), port)
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
            for _ in range(5):  # its first requests are slow (lazy imports, client setup)
                subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "content-type: application/json",
                                "-H", f"authorization: Bearer {MASTER_KEY}", "--data-binary", chat_body(200),
                                f"http://127.0.0.1:{port}/v1/chat/completions"])
            peer_s[0] += time.time() - t_peer
            notes.append(f"peer: LiteLLM {ver} proxy (`litellm --config`, its default single process, no database), "
                         "router with two deployments of the same model_name on the mock")
        time.sleep(1.0)
        idle_rss = tree_rss_mb(targets["twinroute"][0].pid)
        idle_rss_floor = tree_rss_mb(floor.pid)
        idle_rss_peer = tree_rss_mb(peer[0].pid) if peer else None
        # Open the dead provider's breaker (failures: 1) before anything is measured.
        for _ in range(3):
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "content-type: application/json",
                            "--data-binary", chat_body(200), f"http://127.0.0.1:{targets['twinroute_dead_first'][1]}/v1/chat/completions"])

        settled, timers = {}, []

        def settle_timer(label, pid):
            """Read the proxy's RSS RSS_SETTLE_S after a load ends, while the run goes on."""
            t = threading.Timer(RSS_SETTLE_S, lambda: settled.__setitem__(label, tree_rss_mb(pid)))
            t.start(); timers.append(t)

        def measure(label, tname, url, pid, bf, conns, duration, timeout="10s", sse=False, keep=True):
            t0 = time.time()
            c0 = tree_cpu_s(pid) if pid else None
            with RssSampler(pid) as s:
                r = wrk(url, bf, conns, duration, timeout, check_sse=sse)
            # The proxy's own CPU per answered request (per stream for SSE): a cost measure that
            # does not swing with scheduling the way tail latency does on two shared cores.
            r["cpu_us_per_req"] = round((tree_cpu_s(pid) - c0) * 1e6 / r["requests"]) if pid and r["requests"] else None
            if tname == "peer":
                peer_s[0] += time.time() - t0
            r["peak_rss_mb"] = round(s.peak, 1) if pid else None
            if keep:
                results.setdefault(label, {})[tname] = r
            p = lambda v: f"{v:.3f}" if v is not None else "-"
            print(f"  {label:18} {tname:24} {r['rps']:9.0f} req/s  p50 {p(r['p50_ms'])} ms  p99 {p(r['p99_ms'])} ms"
                  f"  errors {errors(r)}  rss {r['peak_rss_mb']}  cpu/req {r['cpu_us_per_req']} us  [{time.time()-started:.0f}s]", file=sys.stderr)
            if r.get("raw"):
                print(f"    wrk said: {r['raw'].strip()}", file=sys.stderr)
            return r

        url = lambda port: f"http://127.0.0.1:{port}/v1/chat/completions"
        main_targets = [("direct", f"{mock}/v1/chat/completions", None),
                        ("floor", url(floor_port), floor.pid),
                        ("twinroute", url(targets["twinroute"][1]), targets["twinroute"][0].pid)]
        if peer:
            main_targets.append(("peer", url(peer[1]), peer[0].pid))

        # Non-streaming bodies: proxies' numbers on a shared 2-core box swing by ±20 % run to
        # run, so each target runs BODY_ROUNDS times, interleaved, and the medians are reported.
        # LiteLLM is ~200x slower; it runs one round, 1 KB only.
        with cpu.stage("bodies"):
            for label, size, conns in BODIES:
                bf = os.path.join(tmp, f"body-{label}.json"); open(bf, "w").write(chat_body(size))
                per = {}
                for i in range(BODY_ROUNDS):
                    for tname, u, pid in main_targets:
                        if tname == "peer" and (label != "1KB" or i > 0):
                            continue
                        per.setdefault(tname, []).append(
                            measure(f"{label} #{i+1}", tname, u, pid, bf, conns, DURATION, keep=False))
                results[label] = {t: median_of(rs) for t, rs in per.items()}

        # Failover pair, interleaved A B A B ... so both see the same machine state; one unrecorded
        # warm-up each first. Reported: medians of p99 and the rounds themselves (the noise).
        bf = os.path.join(tmp, "body-1KB.json")
        rounds = {"twinroute_one_provider": [], "twinroute_dead_first": []}
        with cpu.stage("failover"):
            for tname in ([] if SMOKE else rounds):
                measure("warm-up", tname, url(targets[tname][1]), None, bf, CONNS, "1s", keep=False)
            for i in range(FAILOVER_ROUNDS):
                for tname in rounds:
                    pr, port, _ = targets[tname]
                    rounds[tname].append(measure(f"failover #{i+1}", tname, url(port), pr.pid, bf, CONNS,
                                                 FAILOVER_DURATION, keep=False))
        fo = {}
        for t, rs in rounds.items():
            p99s = [r["p99_ms"] for r in rs if r["p99_ms"] is not None]
            fo[t] = {**median_of(rs), "p99_runs_ms": p99s,
                     "p99_spread_pct": round(100 * (max(p99s) - min(p99s)) / statistics.median(p99s), 1) if p99s else None}
        results["failover"] = fo

        # SSE streams: one wrk connection carries one stream at a time; latency is stream time.
        # Besides wrk's view, twinroute's own: non-2xx answers in /metrics and "broke the response
        # mid-body" warnings in its log. (Its ERROR lines about broken pipes are wrk hanging up on
        # the streams still open when -d ends; those are not counted.)
        sse_bf = os.path.join(tmp, "body-sse.json"); open(sse_bf, "w").write(chat_body(200, stream=True))
        one = subprocess.run(["curl", "-s", "-N", "-H", "content-type: application/json", "--data-binary", f"@{sse_bf}",
                              f"{mock}/v1/chat/completions"], capture_output=True).stdout
        event_bytes = len(one) / max(1, one.count(b"data: "))
        tw_admin = targets["twinroute"][2]
        stream_checks = {}
        with cpu.stage("sse"):
            for n, dur in SSE_LEVELS:
                label = f"SSE x{n}"
                for tname, u, pid in main_targets:
                    if tname == "peer":
                        continue
                    before = (scrape_non_2xx(tw_admin), log_lines("twinroute", "mid-body"))
                    measure(label, tname, u, pid, sse_bf, n, dur, timeout="60s", sse=True)
                    if tname == "twinroute" and n == SSE_LEVELS[-1][0] and not SMOKE:
                        settle_timer(label, pid)
                    after = (scrape_non_2xx(tw_admin), log_lines("twinroute", "mid-body"))
                    if tname == "twinroute":
                        stream_checks[label] = {"twinroute_metrics_non_2xx": None if None in (before[0], after[0]) else after[0] - before[0],
                                                "twinroute_log_mid_body_breaks": after[1] - before[1]}
                    time.sleep(3 if n >= 1000 else 0.5)  # let thousands of connections close
            if peer:
                measure(f"SSE x{SSE_LEVELS[0][0]}", "peer", url(peer[1]), peer[0].pid, sse_bf, SSE_LEVELS[0][0],
                        PEER_SSE_DURATION, timeout="120s", sse=True)
                time.sleep(0.5)
        slow_label, idle_rss_slow = None, None
        if SSE_SLOW_MS:
            # The same 5,000 streams at a pace the box can carry, through a second mock (and a
            # fresh floor and twinroute in front of it) so the first keeps its settings.
            slow_label = f"SSE x{SSE_LEVELS[-1][0]}, {SSE_SLOW_CHUNKS}x{SSE_SLOW_MS}ms"
            slow_port = free_port()
            spawn("mock_slow", [BIN, "mock", "--listen", f"127.0.0.1:{slow_port}", "--name", "mock",
                                "--sse-chunks", str(SSE_SLOW_CHUNKS), "--sse-interval-ms", str(SSE_SLOW_MS)])
            wait_port(slow_port)
            port, admin = free_port(), free_port()
            conf = os.path.join(tmp, "twinroute_slow.yaml")
            open(conf, "w").write(twinroute_conf(port, admin, [("a", f"http://127.0.0.1:{slow_port}"), ("b", f"http://127.0.0.1:{slow_port}")]))
            tw_slow = spawn("twinroute_slow", [BIN, "run", "--config", conf], env={"RUST_LOG": TW_LOG})
            fl_port = free_port()
            fl_slow = spawn("floor_slow", [FLOOR, f"127.0.0.1:{fl_port}", f"127.0.0.1:{slow_port}", str(THREADS)])
            wait_port(port); wait_port(fl_port)
            time.sleep(1.0)
            idle_rss_slow = tree_rss_mb(tw_slow.pid)
            with cpu.stage("sse_slow"):
                for tname, u, pid in [("direct", url(slow_port), None), ("floor", url(fl_port), fl_slow.pid),
                                      ("twinroute", url(port), tw_slow.pid)]:
                    measure(slow_label, tname, u, pid, sse_bf, SSE_LEVELS[-1][0], SSE_SLOW_DURATION, timeout="60s", sse=True)
                    if tname == "twinroute":
                        settle_timer(slow_label, pid)
                    time.sleep(3)
            stream_checks[slow_label] = {"twinroute_metrics_non_2xx": scrape_non_2xx(admin),
                                         "twinroute_log_mid_body_breaks": log_lines("twinroute_slow", "mid-body")}
        for t in timers:
            t.join()
        after_rss = tree_rss_mb(targets["twinroute"][0].pid)
        # Chunks/s actually delivered (bytes read / bytes per event, partial streams included),
        # against what the streams ask for: shows when the machine, not a proxy, sets the pace.
        demand = {f"SSE x{n}": n * 1000 / SSE_INTERVAL_MS for n, _ in SSE_LEVELS}
        if slow_label:
            demand[slow_label] = SSE_LEVELS[-1][0] * 1000 / SSE_SLOW_MS
        for label, want in demand.items():
            for r in results.get(label, {}).values():
                r["chunks_s"] = round(r["read_bytes_s"] / event_bytes) if r.get("read_bytes_s") else None
                r["chunks_s_asked"] = round(want)

        # ---- ratios and targets, all from this run ----
        r1 = results["1KB"]
        top = f"SSE x{SSE_LEVELS[-1][0]}"
        fo1, fo2 = fo["twinroute_one_provider"], fo["twinroute_dead_first"]
        ratios = {
            "1KB twinroute/floor throughput": r1["twinroute"]["rps"] / r1["floor"]["rps"],
            "1KB added p50 over direct, twinroute (ms)": r1["twinroute"]["p50_ms"] - r1["direct"]["p50_ms"],
            "1KB added p50 over direct, floor (ms)": r1["floor"]["p50_ms"] - r1["direct"]["p50_ms"],
        }
        c1 = results.get("1KB c1")
        if c1:
            ratios["1KB c1 p50 twinroute - floor (µs)"] = (c1["twinroute"]["p50_ms"] - c1["floor"]["p50_ms"]) * 1000
            ratios["1KB c1 p50 floor - direct (µs)"] = (c1["floor"]["p50_ms"] - c1["direct"]["p50_ms"]) * 1000
        if "64KB" in results:
            ratios["64KB twinroute/floor throughput"] = results["64KB"]["twinroute"]["rps"] / results["64KB"]["floor"]["rps"]
        if "1MB" in results:
            ratios["1MB twinroute/floor throughput"] = results["1MB"]["twinroute"]["rps"] / results["1MB"]["floor"]["rps"]
            ratios["1MB added p50 over direct, twinroute (ms)"] = results["1MB"]["twinroute"]["p50_ms"] - results["1MB"]["direct"]["p50_ms"]
            ratios["1MB added p50 over direct, floor (ms)"] = results["1MB"]["floor"]["p50_ms"] - results["1MB"]["direct"]["p50_ms"]
            m = results["1MB"]
            ratios["1MB proxy CPU per request twinroute / floor"] = (m["twinroute"]["cpu_us_per_req"] / m["floor"]["cpu_us_per_req"]) if m["floor"].get("cpu_us_per_req") else None
        ratios.update({
            "failover: median p99 dead-first / median p99 one-provider": fo2["p99_ms"] / fo1["p99_ms"],
            "failover: one-provider p99 spread over rounds, (max-min)/median %": fo1["p99_spread_pct"],
            "failover: dead-first p99 spread over rounds, (max-min)/median %": fo2["p99_spread_pct"],
            "failover: median throughput dead-first / one-provider": fo2["rps"] / fo1["rps"],
            "failover: median proxy CPU per request dead-first / one-provider": (fo2["cpu_us_per_req"] / fo1["cpu_us_per_req"]) if fo1.get("cpu_us_per_req") else None,
            "1KB proxy CPU per request twinroute / floor": (r1["twinroute"]["cpu_us_per_req"] / r1["floor"]["cpu_us_per_req"]) if r1["floor"].get("cpu_us_per_req") else None,
            "idle RSS twinroute, at start (MB)": idle_rss,
            "idle RSS floor, at start (MB)": idle_rss_floor,
            "RSS twinroute after the whole run, idle (MB)": after_rss,
        })
        # Each 5,000-stream load ran on its own twinroute, with its own idle RSS before it.
        idle_before = lambda label: idle_rss_slow if label == slow_label else idle_rss
        for label in [f"SSE x{n}" for n, _ in SSE_LEVELS] + ([slow_label] if slow_label else []):
            t = results[label]["twinroute"]
            ratios[f"{label}: twinroute broken streams (wrk)"] = broken(t)
            ratios[f"{label}: twinroute streams completed"] = t["requests"]
            ratios[f"{label}: twinroute peak RSS (MB)"] = t["peak_rss_mb"]
            ratios[f"{label}: floor peak RSS (MB)"] = results[label]["floor"]["peak_rss_mb"]
            if label in settled:
                ratios[f"{label}: twinroute RSS {RSS_SETTLE_S} s after the load (MB)"] = settled[label]
                ratios[f"{label}: twinroute idle RSS before it (MB)"] = idle_before(label)
            if label in stream_checks:
                for k, v in stream_checks[label].items():
                    ratios[f"{label}: {k.replace('_', ' ')}"] = v
        if peer:
            p1 = r1["peer"]
            ratios["1KB twinroute/peer throughput"] = r1["twinroute"]["rps"] / p1["rps"] if p1["rps"] else None
            ratios["1KB peer p50 / twinroute p50"] = p1["p50_ms"] / r1["twinroute"]["p50_ms"] if p1["p50_ms"] else None
            ratios["1KB peer peak RSS / twinroute peak RSS"] = p1["peak_rss_mb"] / r1["twinroute"]["peak_rss_mb"] if p1["peak_rss_mb"] else None
            ratios["idle RSS peer, at start (MB)"] = idle_rss_peer
            s = results.get(f"SSE x{SSE_LEVELS[0][0]}", {})
            if s.get("peer", {}).get("rps") and s.get("twinroute", {}).get("rps"):
                ratios[f"SSE x{SSE_LEVELS[0][0]} twinroute/peer streams per second"] = s["twinroute"]["rps"] / s["peer"]["rps"]
                ratios[f"SSE x{SSE_LEVELS[0][0]} peer p50 / twinroute p50 (stream time)"] = s["peer"]["p50_ms"] / s["twinroute"]["p50_ms"]
                ratios[f"SSE x{SSE_LEVELS[0][0]} peer peak RSS / twinroute peak RSS"] = s["peer"]["peak_rss_mb"] / s["twinroute"]["peak_rss_mb"]
                ratios[f"SSE x{SSE_LEVELS[0][0]} peer broken streams"] = broken(s["peer"])

        def target(name, value, ok, shown):
            return {"target": name, "value": value, "met": bool(ok), "shown": shown}
        checks = []
        if not SMOKE:
            cpu1 = ratios["1KB proxy CPU per request twinroute / floor"]
            c1d = ratios["1KB c1 p50 twinroute - floor (µs)"]
            cpu_m = ratios["1MB proxy CPU per request twinroute / floor"]
            checks += [
                target(f"1 KB, log at {TW_LOG or 'its default (info)'}: >= 0.9x the floor's throughput", ratios["1KB twinroute/floor throughput"],
                       ratios["1KB twinroute/floor throughput"] >= 0.9, f"{ratios['1KB twinroute/floor throughput']:.2f}x"),
                target("1 KB: CPU per request <= 1.15x the floor's", cpu1, cpu1 is not None and cpu1 <= 1.15,
                       f"{cpu1:.2f}x ({r1['twinroute']['cpu_us_per_req']} vs {r1['floor']['cpu_us_per_req']} µs)" if cpu1 else "-"),
                target("1 KB, one client (-c1): p50 within 30 µs of the floor's", c1d, c1d <= 30,
                       f"{c1d:+.0f} µs ({c1['twinroute']['p50_ms'] * 1000:.0f} vs {c1['floor']['p50_ms'] * 1000:.0f} µs; direct {c1['direct']['p50_ms'] * 1000:.0f} µs)"),
                target("1 KB: added p50 over direct <= 0.2 ms", ratios["1KB added p50 over direct, twinroute (ms)"],
                       ratios["1KB added p50 over direct, twinroute (ms)"] <= 0.2,
                       f"{ratios['1KB added p50 over direct, twinroute (ms)']:.2f} ms (floor: {ratios['1KB added p50 over direct, floor (ms)']:.2f} ms)"),
                target("64 KB: >= 0.8x the floor's throughput", ratios["64KB twinroute/floor throughput"],
                       ratios["64KB twinroute/floor throughput"] >= 0.8, f"{ratios['64KB twinroute/floor throughput']:.2f}x"),
                target("1 MB: CPU per request <= 1.5x the floor's", cpu_m, cpu_m is not None and cpu_m <= 1.5,
                       f"{cpu_m:.2f}x ({results['1MB']['twinroute']['cpu_us_per_req']} vs {results['1MB']['floor']['cpu_us_per_req']} µs)" if cpu_m else "-"),
                target("1 MB: added p50 over direct <= 3 ms", ratios["1MB added p50 over direct, twinroute (ms)"],
                       ratios["1MB added p50 over direct, twinroute (ms)"] <= 3,
                       f"{ratios['1MB added p50 over direct, twinroute (ms)']:.2f} ms (floor: {ratios['1MB added p50 over direct, floor (ms)']:.2f} ms)"),
            ]
            for label in [top] + ([slow_label] if slow_label else []):
                t5 = results[label]["twinroute"]
                idle = idle_before(label)
                after = settled.get(label)
                checks += [
                    target(f"{label}: no broken streams", broken(t5), broken(t5) == 0 and errors(t5) == 0 and t5["requests"] > 0,
                           f"{broken(t5)} broken, {errors(t5)} errors of any kind, {t5['requests']} streams completed"),
                    target(f"{label}: proxy peak RSS <= 150 MB", t5["peak_rss_mb"], t5["peak_rss_mb"] <= 150,
                           f"{t5['peak_rss_mb']:.0f} MB (floor: {results[label]['floor']['peak_rss_mb']:.0f} MB)"),
                    target(f"{label}: RSS <= 2x idle {RSS_SETTLE_S} s after", after, after is not None and after <= 2 * idle,
                           f"{after:.1f} MB (idle {idle:.1f} MB)" if after is not None else "-"),
                ]
            checks += [
                target("idle RSS <= 15 MB", idle_rss, idle_rss <= 15, f"{idle_rss:.1f} MB"),
                target("dead first provider: median p99 within 10 % of one provider",
                       ratios["failover: median p99 dead-first / median p99 one-provider"],
                       ratios["failover: median p99 dead-first / median p99 one-provider"] <= 1.10,
                       f"{ratios['failover: median p99 dead-first / median p99 one-provider']:.2f}x "
                       f"(one-provider p99 spread {fo1['p99_spread_pct']:.0f} %)"),
            ]
            if peer and ratios.get("1KB twinroute/peer throughput"):
                checks += [
                    target("vs LiteLLM, 1 KB: >= 50x throughput", ratios["1KB twinroute/peer throughput"],
                           ratios["1KB twinroute/peer throughput"] >= 50, f"{ratios['1KB twinroute/peer throughput']:.0f}x"),
                    target("vs LiteLLM, 1 KB: p50 <= 1/20", ratios["1KB peer p50 / twinroute p50"],
                           ratios["1KB peer p50 / twinroute p50"] >= 20, f"1/{ratios['1KB peer p50 / twinroute p50']:.0f}"),
                    target("vs LiteLLM, 1 KB: peak RSS <= 1/10", ratios["1KB peer peak RSS / twinroute peak RSS"],
                           ratios["1KB peer peak RSS / twinroute peak RSS"] >= 10, f"1/{ratios['1KB peer peak RSS / twinroute peak RSS']:.1f}"),
                ]

        stop_all(procs)
        load_after = os.getloadavg()
        total_s = time.time() - started
        mm = lambda ms: f"{ms/1000:.0f}s" if ms >= 1000 else f"{ms}ms"
        head = (f"wrk 4.x, -t{THREADS}, every target on loopback on one {os.cpu_count()}-core machine (wrk, the mock and the proxies share it). "
                f"Non-streaming: -c{CONNS}" + ("" if SMOKE else " (1 MB: -c8, the mock's 1 MB round trips saturate sooner)") + f", -d{DURATION}, medians of {BODY_ROUNDS} interleaved rounds. "
                f"SSE: {SSE_CHUNKS} chunks {SSE_INTERVAL_MS} ms apart ({STREAM_S:g} s per stream unloaded), -c = concurrent streams, "
                f"-d{', '.join(f'{d} at {n}' for n, d in SSE_LEVELS)}" + (f"; second 5,000-stream run: {SSE_SLOW_CHUNKS} chunks {SSE_SLOW_MS} ms apart, -d{SSE_SLOW_DURATION}" if slow_label else "") +
                f"; req/s = streams completed per second; latency = whole stream. twinroute's log: {TW_LOG_SHOWN}. Failover: {FAILOVER_ROUNDS}x (one-provider, dead-first) interleaved, -d{FAILOVER_DURATION} each, medians.")
        out = {"smoke": SMOKE, "settings": {"threads": THREADS, "connections": CONNS, "duration": DURATION,
                                            "body_rounds": BODY_ROUNDS, "failover_rounds": FAILOVER_ROUNDS,
                                            "failover_duration": FAILOVER_DURATION,
                                            "sse": {"chunks": SSE_CHUNKS, "interval_ms": SSE_INTERVAL_MS,
                                                    "levels": SSE_LEVELS, "slow": SSE_SLOW, "bytes_per_event": event_bytes},
                                            "nofile": nofile, "binary": BIN, "twinroute_log": TW_LOG_SHOWN},
               "machine": {"cpus": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": load_after},
               "cpu_by_stage": cpu.stages, "idle_rss_mb": idle_rss, "results": results, "ratios": ratios,
               "targets": checks, "stream_checks": stream_checks, "failover_rounds": {t: [{k: r[k] for k in ("rps", "p50_ms", "p99_ms")} for r in rs] for t, rs in rounds.items()},
               "notes": notes, "total_seconds": round(total_s), "litellm_seconds": round(peer_s[0])}
        res_dir = os.path.join(ROOT, "bench-results")
        os.makedirs(res_dir, exist_ok=True)
        out["failover_rounds"] = {t: [{k: r[k] for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")} for r in rs] for t, rs in rounds.items()}
        json.dump(out, open(os.path.join(res_dir, "results.json"), "w"), indent=2)

        f = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) and v < 10 else (f"{v:.1f}" if isinstance(v, float) and v < 100 else (f"{v:.0f}" if isinstance(v, float) else str(v))))
        lines = [head, "",
                 "| workload | target | req/s | p50 ms | p90 ms | p99 ms | errors | broken | peak RSS MB | proxy CPU µs/req | chunks/s (asked) |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for w, ts in results.items():
            for t, r in ts.items():
                lines.append(f"| {w} | {LABELS.get(t, t) if t.startswith('twinroute_') else t} | {r['rps']:.0f} | {f(r['p50_ms'])} | {f(r['p90_ms'])} | "
                             f"{f(r['p99_ms'])} | {errors(r)} | {broken(r)} | {f(r.get('peak_rss_mb'))} | {f(r.get('cpu_us_per_req'))} | "
                             + (f"{r['chunks_s']} ({r['chunks_s_asked']})" if r.get("chunks_s") else "-") + " |")
        lines += ["", "errors = non-2xx + socket errors (connect, read, write, timeout) + bad stream bodies; "
                      "broken = non-2xx + read errors + timeouts + 200 streams without `data: [DONE]`.", ""]
        if checks:
            lines += ["| target | this run | |", "|---|---|---|"]
            lines += [f"| {c['target']} | {c['shown']} | {'met' if c['met'] else 'MISSED'} |" for c in checks]
            lines += [""]
        lines += ["| ratio or check (same run) | value |", "|---|---:|"]
        for k, v in ratios.items():
            lines.append(f"| {k} | {f(v)} |")
        lines += ["", "failover rounds, in order (p99 ms / req/s / proxy CPU µs per request):", ""]
        for t, rs in rounds.items():
            lines.append(f"- {LABELS[t]}: " + "; ".join(f"{r['p99_ms']:.2f} / {r['rps']:.0f} / {r['cpu_us_per_req']}" for r in rs))
        lines += [""]
        lines += ["Machine sharing: CPU used by processes other than this benchmark's while it measured.", "",
                  "| stage | wall s | other processes' CPU s | = cores (avg) | hypervisor steal s |", "|---|---:|---:|---:|---:|"]
        for k, v in cpu.stages.items():
            lines.append(f"| {k} | {v['wall_s']} | {v['other_cpu_s']} | {v['other_cores']} | {v['steal_s']} |")
        lines += ["", f"load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, "
                      f"after: {'/'.join(f'{x:.2f}' for x in load_after)}; total {total_s:.0f} s"
                  + (f" ({peer_s[0]:.0f} s of it LiteLLM)" if peer else "")] + notes
        md = "\n".join(lines) + "\n"
        open(os.path.join(res_dir, "results.md"), "w").write(md)
        print(md)
        plot_targets = ["direct", "floor", "twinroute", "peer", "twinroute_one_provider", "twinroute_dead_first"]
        svg = os.path.join(res_dir, "latency.svg")
        titles = {"1KB": f"1 KB bodies, {CONNS} connections", "1KB c1": "1 KB bodies, one client", "64KB": f"64 KB bodies, {CONNS} connections",
                  "1MB": "1 MB bodies, 8 connections", "failover": f"failover pair, 1 KB, {CONNS} conns (medians)"}
        for n, _ in SSE_LEVELS:
            titles[f"SSE x{n}"] = f"SSE: {n:,} streams, {SSE_CHUNKS} chunks x {SSE_INTERVAL_MS} ms"
        if slow_label:
            titles[slow_label] = f"SSE: {SSE_LEVELS[-1][0]:,} streams, {SSE_SLOW_CHUNKS} chunks x {SSE_SLOW_MS} ms"
        svg_plot(results, list(results), plot_targets, svg,
                 f"one run, {time.strftime('%Y-%m-%d')}, loopback, {os.cpu_count()} cores shared by wrk, mock and proxy; "
                 f"SSE latency = whole stream; bodies: medians of {BODY_ROUNDS} rounds; failover: medians of {FAILOVER_ROUNDS} rounds",
                 titles)
        if not SMOKE:
            shutil.copy(svg, os.path.join(ROOT, "benches", "latency.svg"))

        print(f"bench: total {total_s:.0f} s ({total_s/60:.1f} min)" +
              (f", of which LiteLLM {peer_s[0]:.0f} s: {total_s - peer_s[0]:.0f} s without it" if peer else ""), file=sys.stderr)
        if SMOKE:
            bad = [(w, t, {k: r[k] for k in ERROR_FIELDS if r.get(k)}) for w, ts in results.items() for t, r in ts.items()
                   if r["requests"] == 0 or errors(r)]
            logged = {k: v for c in stream_checks.values() for k, v in c.items() if v}
            if bad or logged:
                print(f"smoke FAILED: {bad} {logged}; process logs in {tmp}", file=sys.stderr)
                sys.exit(1)
            print(f"smoke OK: every target answered 2xx with zero errors ({total_s:.0f} s)", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)  # kept (with the processes' logs) when a run fails
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
