#!/usr/bin/env python3
"""twinroute benchmark: the same wrk load against each target, started in one run on loopback.

Targets: direct (the mock provider itself), floor (a minimal Pingora pass-through, examples/floor.rs),
twinroute (two providers on the mock), and for the failover workload twinroute with a dead first
provider (connections refused, breaker open after warm-up) next to twinroute with that provider
removed. Prints a markdown table and writes bench-results/results.json. Ratios come from this run.
"""
import json, os, re, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "twinroute")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "floor")
DURATION = os.environ.get("BENCH_DURATION", "8s")
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
THREADS = 2

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")

def peak_rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None

def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n

def wrk(url, body_file):
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write(f'''wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body_file}", "rb"); wrk.body = f:read("*all"); f:close()
''')
    lua.close()
    out = subprocess.run(["wrk", "-t", str(THREADS), "-c", str(CONNS), "-d", DURATION, "--latency", "-s", lua.name, url],
                         capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "p50_ms": to_ms(lat["50"]), "p90_ms": to_ms(lat["90"]), "p99_ms": to_ms(lat["99"]),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0}

def body(size):
    filler = "x" * max(0, size - 90)
    return json.dumps({"messages": [{"role": "user", "content": filler}], "model": "m", "max_tokens": 16})

def twinroute_conf(listen, admin, providers):
    prov = "".join(f'  - {{name: {n}, api: openai, base_url: "{u}", timeouts: {{connect_ms: 200, first_byte_ms: 5000}}, breaker: {{failures: 1, cooldown_ms: 600000}}}}\n' for n, u in providers)
    offers = "".join(f"      - {{provider: {n}, model: {n}-m}}\n" for n, _ in providers)
    return f'listen: "127.0.0.1:{listen}"\nadmin_listen: "127.0.0.1:{admin}"\nthreads: {THREADS}\nproviders:\n{prov}models:\n  - name: m\n    offerings:\n{offers}'

def main():
    procs, results = [], {}
    tmp = tempfile.mkdtemp(prefix="twinroute-bench-")
    def spawn(args):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(p); return p
    try:
        mock_port = free_port()
        spawn([BIN, "mock", "--listen", f"127.0.0.1:{mock_port}", "--name", "mock"]); wait_port(mock_port)
        mock = f"http://127.0.0.1:{mock_port}"
        floor_port = free_port()
        floor = spawn([FLOOR, f"127.0.0.1:{floor_port}", f"127.0.0.1:{mock_port}", str(THREADS)]); wait_port(floor_port)
        dead = free_port()  # nothing listens here: connection refused
        targets = {}
        for name, providers in [("twinroute", [("a", mock), ("b", mock)]),
                                ("twinroute_one_provider", [("b", mock)]),
                                ("twinroute_dead_first", [("dead", f"http://127.0.0.1:{dead}"), ("b", mock)])]:
            port, admin = free_port(), free_port()
            conf = os.path.join(tmp, f"{name}.yaml")
            open(conf, "w").write(twinroute_conf(port, admin, providers))
            targets[name] = (spawn([BIN, "run", "--config", conf]), port)
            wait_port(port)
        time.sleep(0.5)
        idle_rss = peak_rss_mb(targets["twinroute"][0].pid)
        sizes = [("1KB", 1024), ("64KB", 64 * 1024)]
        for label, size in sizes:
            bf = os.path.join(tmp, f"body-{label}.json"); open(bf, "w").write(body(size))
            # Warm-up opens the dead provider's breaker (failures: 1).
            subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", "/dev/null", f"http://127.0.0.1:{targets['twinroute_dead_first'][1]}/"], capture_output=True)
            for tname, url, pid in [("direct", f"{mock}/v1/chat/completions", None),
                                    ("floor", f"http://127.0.0.1:{floor_port}/v1/chat/completions", floor.pid)] + \
                                   [(n, f"http://127.0.0.1:{p}/v1/chat/completions", pr.pid) for n, (pr, p) in targets.items()]:
                if tname == "twinroute_dead_first":
                    subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "content-type: application/json", "--data-binary", f"@{bf}", url])
                r = wrk(url, bf)
                r["peak_rss_mb"] = peak_rss_mb(pid) if pid else None
                results.setdefault(label, {})[tname] = r
                print(f"  {label:5} {tname:24} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms", file=sys.stderr)
        ratios = {}
        for label, _ in sizes:
            r = results[label]
            ratios[label] = {
                "twinroute_over_floor_throughput": r["twinroute"]["rps"] / r["floor"]["rps"],
                "twinroute_added_p50_ms_over_direct": r["twinroute"]["p50_ms"] - r["direct"]["p50_ms"],
                "floor_added_p50_ms_over_direct": r["floor"]["p50_ms"] - r["direct"]["p50_ms"],
                "dead_first_p99_over_one_provider_p99": r["twinroute_dead_first"]["p99_ms"] / r["twinroute_one_provider"]["p99_ms"],
            }
        out = {"duration": DURATION, "connections": CONNS, "threads": THREADS, "idle_rss_mb": idle_rss, "results": results, "ratios": ratios}
        os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
        json.dump(out, open(os.path.join(ROOT, "bench-results", "results.json"), "w"), indent=2)
        print(f"wrk -t{THREADS} -c{CONNS} -d{DURATION}, non-streaming chat completions, all on loopback\n")
        print("| body | target | req/s | p50 ms | p90 ms | p99 ms | non-2xx | peak RSS MB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for label, _ in sizes:
            for t, r in results[label].items():
                rss = f"{r['peak_rss_mb']:.1f}" if r["peak_rss_mb"] else "-"
                print(f"| {label} | {t} | {r['rps']:.0f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['non_2xx'] + r['socket_errors']} | {rss} |")
        print("\n| body | twinroute/floor throughput | added p50 vs direct: twinroute | floor | dead-first p99 / one-provider p99 |")
        print("|---|---:|---:|---:|---:|")
        for label, _ in sizes:
            q = ratios[label]
            print(f"| {label} | {q['twinroute_over_floor_throughput']:.2f}x | {q['twinroute_added_p50_ms_over_direct']:.3f} ms | {q['floor_added_p50_ms_over_direct']:.3f} ms | {q['dead_first_p99_over_one_provider_p99']:.2f}x |")
        print(f"\nidle RSS of twinroute: {idle_rss:.1f} MB")
    finally:
        for p in procs:
            p.kill()

if __name__ == "__main__":
    main()
