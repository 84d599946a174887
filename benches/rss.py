"""Memory of many concurrent streams, for one or more twinroute binaries, in one run.

    python3 benches/rss.py BINARY [BINARY ...]

For each binary: starts it against one mock (the first binary's `mock` subcommand) and opens
RSS_CONNS concurrent SSE streams (default 5000) with wrk for RSS_SECONDS (default 20), each stream
RSS_CHUNKS chunks (default 40) RSS_INTERVAL_MS apart (default 250): the issue's "5,000 streams of
40 chunks x 250 ms" pace. Prints idle RSS, peak RSS under the load (sampled every 50 ms), broken
streams (wrk socket errors and non-2xx), and RSS 30 s after the load (RSS_AFTER_S) — the part an
allocator that returns memory changes. The same mock serves every binary, one after another.

RSS_JEMALLOC_STATS=1: at that point (the process still running) print jemalloc's own account of
the memory it holds: live bytes, bytes in used pages, its metadata, what its thread caches keep.
Needs gdb and a binary built with `cargo build --release --features jemalloc-stats`.

Needs wrk and an open-files limit of ~12000 (benches/run.sh raises it; here: ulimit -n 65536).
"""
import json, os, re, socket, subprocess, sys, tempfile, threading, time

CONNS = int(os.environ.get("RSS_CONNS", "5000"))
SECONDS = int(os.environ.get("RSS_SECONDS", "20"))
CHUNKS = int(os.environ.get("RSS_CHUNKS", "40"))
INTERVAL = int(os.environ.get("RSS_INTERVAL_MS", "250"))
AFTER = int(os.environ.get("RSS_AFTER_S", "30"))
JEMALLOC_STATS = os.environ.get("RSS_JEMALLOC_STATS") == "1"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(p):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close(); return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"port {p} not up")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def jemalloc_stats(pid, err_path):
    """jemalloc's totals for the running process: gdb calls its stats printer, which writes to
    the process's stderr (a file here); merged-arena totals only."""
    before = os.path.getsize(err_path)
    # Options omit the general, per-arena, bin, large, mutex, extent and HPA sections.
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex",
                    'call (void)_rjem_je_stats_print(0, 0, "gablxeh")'],
                   capture_output=True, timeout=60)
    with open(err_path) as f:
        f.seek(before)
        text = f.read()
    if "config.stats: false" in text or "Allocated:" not in text:
        return "no statistics (build with --features jemalloc-stats; needs gdb)"
    mb = lambda v: f"{int(v) / 1048576:.1f} MB"
    tot = re.search(r"Allocated: (\d+), active: (\d+), metadata: (\d+).*resident: (\d+), mapped: (\d+)", text)
    field = lambda name: (re.search(rf"^{name}:\s+(\d+)", text, re.M) or [None, "0"])[1]
    return (f"live {mb(tot[1])}, in used pages {mb(tot[2])}, metadata {mb(tot[3])} "
            f"(extent descriptors free for reuse: {field('extent_avail')}), thread caches "
            f"{mb(field('tcache_bytes'))}, resident {mb(tot[4])}, mapped {mb(tot[5])}")


def main():
    bins = sys.argv[1:]
    if not bins:
        raise SystemExit(__doc__)
    tmp = tempfile.mkdtemp()
    mp = free_port()
    mock = subprocess.Popen([bins[0], "mock", "--listen", f"127.0.0.1:{mp}", "--name", "mock",
                             "--sse-chunks", str(CHUNKS), "--sse-interval-ms", str(INTERVAL)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(mp)
    body = os.path.join(tmp, "body.json")
    json.dump({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x" * 900}]},
              open(body, "w"))
    lua = os.path.join(tmp, "s.lua")
    open(lua, "w").write(f'wrk.method="POST"\nwrk.headers["Content-Type"]="application/json"\n'
                         f'local f=io.open("{body}","rb"); wrk.body=f:read("*all"); f:close()\n')
    try:
        for i, b in enumerate(bins):
            port, admin = free_port(), free_port()
            conf = os.path.join(tmp, f"{i}.yaml")
            open(conf, "w").write(
                f'listen: "127.0.0.1:{port}"\nadmin_listen: "127.0.0.1:{admin}"\nthreads: 2\n'
                f'max_concurrent_requests: 20000\nproviders:\n  - {{name: a, api: openai, '
                f'base_url: "http://127.0.0.1:{mp}", timeouts: {{connect_ms: 3000, first_byte_ms: 10000}}}}\n'
                f'models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n')
            err_path = os.path.join(tmp, f"{i}.stderr")
            p = subprocess.Popen([b, "run", "--config", conf], stdout=subprocess.DEVNULL,
                                 stderr=open(err_path, "w"), env={**os.environ, "RUST_LOG": "warn"})
            wait_port(port)
            time.sleep(0.5)
            idle = rss_mb(p.pid)
            peak = [idle]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], rss_mb(p.pid)); time.sleep(0.05)
            t = threading.Thread(target=sample); t.start()
            out = subprocess.run(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "--timeout", "30s",
                                  "-s", lua, f"http://127.0.0.1:{port}/v1/chat/completions"],
                                 capture_output=True, text=True).stdout
            done.set(); t.join()
            reqs = re.search(r"(\d+) requests in", out)
            errs = re.search(r"Socket errors: (.*)", out)
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            time.sleep(AFTER)
            after = rss_mb(p.pid)
            print(f"{b}: idle {idle:.1f} MB, peak {peak[0]:.1f} MB at {CONNS} streams "
                  f"({CHUNKS}x{INTERVAL}ms), after {AFTER} s {after:.1f} MB; "
                  f"streams {reqs.group(1) if reqs else '?'}, socket errors: "
                  f"{errs.group(1) if errs else 'none'}, non-2xx {non2xx.group(1) if non2xx else 0}",
                  flush=True)
            if JEMALLOC_STATS:
                print("  jemalloc: " + jemalloc_stats(p.pid, err_path), flush=True)
            p.terminate(); p.wait()
    finally:
        mock.terminate()


if __name__ == "__main__":
    main()
