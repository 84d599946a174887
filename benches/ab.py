"""A/B of two twinroute binaries on the same load, interleaved, in one run.

    python3 benches/ab.py OLD_BINARY NEW_BINARY [body bytes, default 1024] [rounds, default 6]

Starts one mock provider (`NEW_BINARY mock`) and both binaries with the same one-provider
config, then runs wrk (-t2 -c32 -d5s) against each in alternating order (old-new, new-old, ...)
so drift on a shared machine hits both alike, and prints per-round req/s, p50 and proxy CPU per
request plus the new/old ratios of the medians. How a change's cost was measured: build the
previous commit into another target dir, e.g.
    git worktree add /tmp/old HEAD~1 && (cd /tmp/old && cargo build --release --bin twinroute)

Streams: AB_STREAM=1 sends `"stream": true` (the mock answers AB_CHUNKS chunks, default 40,
AB_INTERVAL_MS apart, default 10) with AB_CONNS concurrent connections (default 32), and prints
chunks/s beside req/s (one request = one stream). AB_NEW_POLICY / AB_OLD_POLICY add policy keys to
that side's config, e.g. the streams issue's check (commit point, stall watch and stream recovery
on, at 1,000 concurrent streams):
    AB_STREAM=1 AB_CONNS=1000 AB_NEW_POLICY="stream_recovery: continue" \
        python3 benches/ab.py OLD NEW 1024 4

AB_OLD_TOP / AB_NEW_TOP add top-level config lines to that side, e.g. the queue configured but
unused (its drain service idle, no request background):
    AB_NEW_TOP="state_dir: /tmp/ab-state" python3 benches/ab.py OLD NEW 1024 6

AB_AUTH sends `Authorization: Bearer AB_AUTH` on both sides (with a team on one side, say:
    AB_AUTH=abt-token ABT=abt-token AB_NEW_TOP="teams: [{name: t, tokens_env: ABT, budget: {usd: 1000000, per: day}, limits: {requests_per_minute: 100000000, tokens_per_minute: 100000000000}}]" \
        python3 benches/ab.py BIN BIN 1024 6
measures a team with a budget and limits, in process, against no teams).

AB_RUST_LOG (default warn: no access line) sets both sides' log level; AB_RUST_LOG=info measures
with the access log on, one line per request.

AB_OLD_PATH / AB_NEW_PATH (default /v1/chat/completions) send each side's load to another client
route; /v1/messages sends an Anthropic Messages body. With the same binary twice and
AB_NEW_PATH=/v1/messages, "new" is the translated path (Anthropic client, OpenAI-format mock)
against the spliced one, measured in the same run:
    AB_NEW_PATH=/v1/messages python3 benches/ab.py target/release/twinroute target/release/twinroute
"""
import subprocess, os, time, socket, re, tempfile, sys, json
def free_port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
def wait_port(p):
    for _ in range(500):
        try: socket.create_connection(("127.0.0.1",p),0.2).close(); return
        except OSError: time.sleep(0.02)
    raise SystemExit(f"port {p} not up")
def cpu(pid):
    f=open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
bins={"old":sys.argv[1],"new":sys.argv[2]}
size=int(sys.argv[3]) if len(sys.argv)>3 else 1024
rounds=int(sys.argv[4]) if len(sys.argv)>4 else 4
tmp=tempfile.mkdtemp()
mp=free_port()
stream=os.environ.get("AB_STREAM")=="1"
chunks=int(os.environ.get("AB_CHUNKS","40"))
conns=os.environ.get("AB_CONNS","32")
policies={"old":os.environ.get("AB_OLD_POLICY",""),"new":os.environ.get("AB_NEW_POLICY","")}
tops={"old":os.environ.get("AB_OLD_TOP",""),"new":os.environ.get("AB_NEW_TOP","")}
procs=[subprocess.Popen([bins["new"],"mock","--listen",f"127.0.0.1:{mp}","--name","mock","--sse-chunks",str(chunks),"--sse-interval-ms",os.environ.get("AB_INTERVAL_MS","10")],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)]
wait_port(mp)
targets={}
for name,b in bins.items():
    port,admin=free_port(),free_port()
    conf=os.path.join(tmp,name+".yaml")
    open(conf,"w").write(f'listen: "127.0.0.1:{port}"\nadmin_listen: "127.0.0.1:{admin}"\nthreads: 2\nmax_concurrent_requests: 20000\n{tops[name]+chr(10) if tops[name] else ""}providers:\n  - {{name: a, api: openai, base_url: "http://127.0.0.1:{mp}", timeouts: {{connect_ms: 3000, first_byte_ms: 10000}}}}\nmodels:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n' + (f'policy: {{{policies[name]}}}\n' if policies[name] else ''))
    # AB_LOG_TO=pipe: the proxy's stderr is a pipe read by a drain (as a container runtime
    # reads it); =file: a file; default /dev/null (what a line costs to format, not to write).
    log_to=os.environ.get("AB_LOG_TO","null")
    err=subprocess.DEVNULL if log_to=="null" else (open(os.path.join(tmp,name+".log"),"w") if log_to=="file" else subprocess.PIPE)
    p=subprocess.Popen([b,"run","--config",conf],stdout=subprocess.DEVNULL,stderr=err,env={**os.environ,"RUST_LOG":os.environ.get("AB_RUST_LOG","warn")})
    if log_to=="pipe":
        import threading
        threading.Thread(target=lambda f=p.stderr: [None for _ in iter(lambda: f.read(65536), b"")],daemon=True).start()
    procs.append(p); targets[name]=(p,port); wait_port(port)
paths={"old":os.environ.get("AB_OLD_PATH","/v1/chat/completions"),"new":os.environ.get("AB_NEW_PATH","/v1/chat/completions")}
pad="x"*max(0,size-80)
luas={}
for name,path in paths.items():
    body=os.path.join(tmp,name+"-body.json")
    doc={"model":"m","messages":[{"role":"user","content":pad}]}
    if stream:
        doc["stream"]=True
    if path.startswith("/v1/messages"):
        doc["max_tokens"]=256
    open(body,"w").write(json.dumps(doc))
    lua=os.path.join(tmp,name+".lua")
    auth=os.environ.get("AB_AUTH")
    auth_line=f'wrk.headers["Authorization"]="Bearer {auth}"\n' if auth else ""
    open(lua,"w").write(f'wrk.method="POST"\nwrk.headers["Content-Type"]="application/json"\nwrk.headers["anthropic-version"]="2023-06-01"\n{auth_line}local f=io.open("{body}","rb"); wrk.body=f:read("*all"); f:close()\n')
    luas[name]=lua
res={k:[] for k in bins}
try:
    for r in range(rounds):
        for name in (["old","new"] if r%2==0 else ["new","old"]):
            p,port=targets[name]
            c0=cpu(p.pid)
            out=subprocess.run(["wrk","-t2",f"-c{conns}","-d5s","--latency","-s",luas[name],f"http://127.0.0.1:{port}{paths[name]}"],capture_output=True,text=True).stdout
            if "Non-2xx" in out:
                raise SystemExit(f"{name}: non-2xx answers:\n{out}")
            c1=cpu(p.pid)
            rps=float(re.search(r"Requests/sec:\s+([\d.]+)",out).group(1))
            n=int(re.search(r"(\d+) requests in",out).group(1))
            p50=re.search(r"50%\s+(\S+)",out).group(1)
            res[name].append((rps,(c1-c0)/n*1e6))
            per_stream=f" ({rps*chunks:.0f} chunks/s)" if stream else ""
            print(f"round {r} {name}: {rps:.0f} req/s{per_stream} p50 {p50} cpu/req {(c1-c0)/n*1e6:.1f} us", flush=True)
finally:
    for p in procs: p.terminate()
import statistics as st
for k,v in res.items():
    print(k, "median req/s", st.median(x[0] for x in v), "median cpu/req us", round(st.median(x[1] for x in v),1))
print("new/old throughput", round(st.median(x[0] for x in res["new"])/st.median(x[0] for x in res["old"]),3),
      "cpu/req", round(st.median(x[1] for x in res["new"])/st.median(x[1] for x in res["old"]),3))
