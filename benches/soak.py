#!/usr/bin/env python3
"""twinroute soak: mixed traffic for a long run, RSS sampled, growth after warm-up reported.

Starts two mock providers (the first answering every request with 503, so failover, breaker
trips and probation requests run all the time; the second healthy), twinroute in front of them,
and wrk with a Lua script mixing non-streaming requests of 1 KB and 64 KB, SSE streams, and
unknown-model 404s. Samples twinroute's RSS every 5 s.

    python3 benches/soak.py            # 10 minutes (SOAK_SECONDS=600)
    SOAK_SECONDS=60 python3 benches/soak.py

Writes bench-results/soak.json and prints a markdown summary. Needs release binaries
(BENCH_TARGET_DIR, default target) and wrk.
"""
import json, os, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("BENCH_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "twinroute")
SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
WARMUP = min(60, SECONDS // 5)


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


LUA = r'''
local small = '{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"' .. string.rep("x", 900) .. '"}]}'
local big = '{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"' .. string.rep("y", 64000) .. '"}]}'
local stream = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
local unknown = '{"model":"no-such-model","messages":[]}'
local n = 0
request = function()
  n = n + 1
  local body
  if n % 10 == 0 then body = big
  elseif n % 10 == 1 or n % 10 == 2 then body = stream
  elseif n % 50 == 3 then body = unknown
  else body = small end
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json"}, body)
end
'''


def main():
    tmp = tempfile.mkdtemp(prefix="twinroute-soak-")
    procs = []
    try:
        def spawn(args, **kw):
            p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "RUST_LOG": "warn"}, **kw)
            procs.append(p); return p
        good, bad = free_port(), free_port()
        spawn([BIN, "mock", "--listen", f"127.0.0.1:{good}", "--name", "good", "--sse-chunks", "20", "--sse-interval-ms", "5"])
        spawn([BIN, "mock", "--listen", f"127.0.0.1:{bad}", "--name", "bad", "--fail-status", "503"])
        wait_port(good); wait_port(bad)
        port, admin = free_port(), free_port()
        conf = os.path.join(tmp, "soak.yaml")
        # The failing provider is first with a short breaker cooldown: failover, breaker trips and
        # probation requests happen all run long, not just once.
        open(conf, "w").write(
            f'listen: "127.0.0.1:{port}"\nadmin_listen: "127.0.0.1:{admin}"\nthreads: 2\n'
            f'max_concurrent_requests: 4096\nproviders:\n'
            f'  - {{name: bad, api: openai, base_url: "http://127.0.0.1:{bad}", probe: {{enabled: false}}, breaker: {{failures: 3, cooldown_ms: 500}}}}\n'
            f'  - {{name: good, api: openai, base_url: "http://127.0.0.1:{good}", probe: {{interval_ms: 1000}}}}\n'
            f'models:\n  - name: m\n    offerings:\n      - {{provider: bad, model: bad-m}}\n      - {{provider: good, model: good-m}}\n'
            f'policy: {{backoff: {{base_ms: 1, max_ms: 5}}}}\n')
        tw = spawn([BIN, "run", "--config", conf])
        wait_port(port)
        lua = os.path.join(tmp, "mix.lua"); open(lua, "w").write(LUA)
        idle = rss_mb(tw.pid)
        wrk = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{SECONDS}s", "--latency", "-s", lua,
                                f"http://127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        samples = []
        start = time.time()
        while wrk.poll() is None:
            time.sleep(5)
            t = time.time() - start
            samples.append((round(t), round(rss_mb(tw.pid), 1)))
            print(f"  t={t:6.0f}s  rss={samples[-1][1]:6.1f} MB", file=sys.stderr)
        out = wrk.stdout.read()
        after = [r for t, r in samples if t >= WARMUP]
        warm = after[0] if after else samples[-1][1]
        peak_after = max(after) if after else warm
        end = samples[-1][1]
        reqs = next((l for l in out.splitlines() if "requests in" in l), "").strip()
        result = {"seconds": SECONDS, "warmup_s": WARMUP, "idle_rss_mb": idle, "rss_after_warmup_mb": warm,
                  "peak_rss_after_warmup_mb": peak_after, "final_rss_mb": end,
                  "growth_after_warmup_mb": round(end - warm, 1), "wrk": reqs, "samples": samples}
        os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
        json.dump(result, open(os.path.join(ROOT, "bench-results", "soak.json"), "w"), indent=2)
        print(f"soak: {SECONDS}s of mixed traffic (1 KB / 64 KB / SSE / 404s; the first provider 503s, breaker cycling)")
        print(f"  {reqs}")
        print(f"  RSS idle {idle:.1f} MB, after {WARMUP}s warm-up {warm:.1f} MB, peak after warm-up {peak_after:.1f} MB, final {end:.1f} MB")
        print(f"  growth after warm-up: {end - warm:+.1f} MB")
        if tw.poll() is not None:
            raise SystemExit("twinroute died during the soak")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
