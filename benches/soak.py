#!/usr/bin/env python3
"""twinroute soak: mixed traffic for a long run, RSS sampled, growth after warm-up reported.

Starts two mock providers (the first answering every request with 503, so failover, breaker
trips and probation requests run all the time; the second healthy), twinroute in front of them,
and wrk with a Lua script mixing non-streaming requests of 1 KB and 64 KB, SSE streams, and
unknown-model 404s. Beside it, hostile clients the header guard must cut without leaking: headers
that stall, headers over the size limit, silent connections, keepalive connections left idle
(about 50 new ones a second, counted by outcome). Samples twinroute's RSS and open file
descriptors every 5 s; descriptors are compared with the start once the load has stopped.

    python3 benches/soak.py            # 10 minutes (SOAK_SECONDS=600)
    SOAK_SECONDS=60 python3 benches/soak.py

Writes bench-results/soak.json and prints a markdown summary. Needs release binaries
(BENCH_TARGET_DIR, default target) and wrk.
"""
import json, os, socket, subprocess, sys, tempfile, threading, time

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


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_sockets(port):
    """Sockets on twinroute's listening port that are neither the listener nor in TIME_WAIT:
    client connections it still holds (pooled upstream connections do not count here)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] not in ("0A", "06"):
                n += 1
    return n


def hostile(port, stop, counts):
    """One hostile client after another, round robin over four kinds; counts what each got."""
    kinds = ["stalled_header", "oversized_header", "silent", "idle_keepalive"]
    small = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    n = 0
    while not stop.is_set():
        kind = kinds[n % len(kinds)]
        n += 1
        try:
            s = socket.create_connection(("127.0.0.1", port), 2)
            s.settimeout(8)
            if kind == "stalled_header":
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            elif kind == "oversized_header":
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n")
            elif kind == "idle_keepalive":
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: " + str(len(small)).encode() + b"\r\n\r\n" + small)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            status = got[9:12].decode(errors="replace") if got.startswith(b"HTTP/1.1 ") else "closed"
            counts[f"{kind}:{status}"] = counts.get(f"{kind}:{status}", 0) + 1
            s.close()
        except OSError as e:
            counts[f"{kind}:error:{type(e).__name__}"] = counts.get(f"{kind}:error:{type(e).__name__}", 0) + 1


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
            f'max_concurrent_requests: 4096\nclient_header_timeout_ms: 1000\n'
            f'client_keepalive_timeout_ms: 2000\nmax_request_header_bytes: 16384\nproviders:\n'
            f'  - {{name: bad, api: openai, base_url: "http://127.0.0.1:{bad}", probe: {{enabled: false}}, breaker: {{failures: 3, cooldown_ms: 500}}}}\n'
            f'  - {{name: good, api: openai, base_url: "http://127.0.0.1:{good}", probe: {{interval_ms: 1000}}}}\n'
            f'models:\n  - name: m\n    offerings:\n      - {{provider: bad, model: bad-m}}\n      - {{provider: good, model: good-m}}\n'
            f'policy: {{backoff: {{base_ms: 1, max_ms: 5}}}}\n')
        tw = spawn([BIN, "run", "--config", conf])
        wait_port(port)
        lua = os.path.join(tmp, "mix.lua"); open(lua, "w").write(LUA)
        idle = rss_mb(tw.pid)
        fds_start = fds(tw.pid)
        stop, counts = threading.Event(), {}
        # ~50 hostile connections a second: each waits about a second for its cut.
        threads = [threading.Thread(target=hostile, args=(port, stop, counts), daemon=True) for _ in range(50)]
        for t in threads:
            t.start()
        wrk = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{SECONDS}s", "--latency", "-s", lua,
                                f"http://127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        samples = []
        start = time.time()
        while wrk.poll() is None:
            time.sleep(5)
            t = time.time() - start
            samples.append((round(t), round(rss_mb(tw.pid), 1), fds(tw.pid)))
            print(f"  t={t:6.0f}s  rss={samples[-1][1]:6.1f} MB  fds={samples[-1][2]}", file=sys.stderr)
        stop.set()
        for t in threads:
            t.join(15)
        time.sleep(5)  # lingering closes (2 s) and idle keepalives (2 s) run out
        fds_end = fds(tw.pid)
        clients_end = client_sockets(port)
        out = wrk.stdout.read()
        after = [r for t, r, _ in samples if t >= WARMUP]
        warm = after[0] if after else samples[-1][1]
        peak_after = max(after) if after else warm
        end = samples[-1][1]
        reqs = next((l for l in out.splitlines() if "requests in" in l), "").strip()
        result = {"seconds": SECONDS, "warmup_s": WARMUP, "idle_rss_mb": idle, "rss_after_warmup_mb": warm,
                  "peak_rss_after_warmup_mb": peak_after, "final_rss_mb": end,
                  "growth_after_warmup_mb": round(end - warm, 1), "wrk": reqs,
                  "fds_start": fds_start, "fds_end_after_load": fds_end,
                  "client_sockets_after_load": clients_end, "hostile": counts, "samples": samples}
        os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
        json.dump(result, open(os.path.join(ROOT, "bench-results", "soak.json"), "w"), indent=2)
        print(f"soak: {SECONDS}s of mixed traffic (1 KB / 64 KB / SSE / 404s; the first provider 503s, breaker cycling)")
        print(f"  {reqs}")
        print(f"  RSS idle {idle:.1f} MB, after {WARMUP}s warm-up {warm:.1f} MB, peak after warm-up {peak_after:.1f} MB, final {end:.1f} MB")
        print(f"  growth after warm-up: {end - warm:+.1f} MB")
        print(f"  hostile clients: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
        print(f"  open descriptors: {fds_start} at start, {fds_end} after the load stopped (pooled "
              f"upstream connections included); client sockets still held: {clients_end}")
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
