"""End-to-end harness: fixed-rate open-loop load (oha --latency-correction) against the same leaf
directly and through each proxy, targets interleaved and repeated, medians reported.

Load generator pinned to CPU 0; leaf and proxy to CPU 1 (taskset). For each workload and target:
p50/p90/p99 at a fixed rate, the achieved rate, CPU seconds the proxy and the leaf used per
1,000 requests,
and the maximum sustainable rate (highest rate with >= 95% achieved, no errors and p99 < 250 ms:
from half the fixed rate, halved until one is sustained, then raised in steps of 25%, then the
last step bisected down to 5%; searched in as many rounds as there are repeats, median reported).
The leaf parses every body as JSON and checks it against the workload: bodies equal to the full
request, to the correctly trimmed one, or wrong (e.g. numbers rounded by cjson) are counted, each
for the target that sent it (the tally is read once the leaf has answered everything in flight).

--grpc: the same rounds for gRPC (workload kserve-grpc-batch: a ~1.6 MB ModelInferRequest, 1,000
FP32 [400, 1] inputs in raw_input_contents, allowlist 100) over h2c: direct to the leaf, the
trimmer (an h2c cluster, trimming), and Envoy as a plain h2c forwarder (one worker). The load
generator is `trimmer-e2e grpc-load` (fixed rate, open loop, latency from each request's
scheduled send time); the leaf decodes every message with prost, answers a small
ModelInferResponse with grpc-status 0 and tells full, trimmed and wrong messages apart.
No maximum-rate search in this mode.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

NGINX_MODULES = "/usr/lib/nginx/modules"
LUA_CPATH = "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, attempt, timeout=10.0):
    """Retries `attempt` (it raises OSError until it succeeds) for up to `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            attempt().close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(what)


def wait_port(port):
    wait_for(f"nothing listening on {port}",
             lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2))


def wait_ready(admin_port):
    """The trimmer listens before its first bundle scan ends; until /readyz says so, requests
    would pass untouched and be counted as `full`. (urlopen raises on the 503 of not ready.)"""
    wait_for(f"trimmer not ready (admin port {admin_port})",
             lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1))


def cpu_seconds(pids):
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except FileNotFoundError:
            pass
    return total / ticks


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]
    except Exception:
        return []


class Target:
    def __init__(self, name, port, proc, pids_fn):
        self.name, self.port, self.proc, self.pids_fn = name, port, proc, pids_fn

    def pids(self):
        return self.pids_fn()


def start(cmd, cpu="1", **kw):
    return subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def nginx_conf(work, port, leaf_port, lua_allowlist=None):
    lua = ""
    modules = ""
    if lua_allowlist:
        modules = f"load_module {NGINX_MODULES}/ndk_http_module.so;\nload_module {NGINX_MODULES}/ngx_http_lua_module.so;\n"
        lua = f"""
    lua_package_cpath "{LUA_CPATH}";
    init_by_lua_block {{
        cjson = require "cjson"
        allow = {{}}
        for line in io.lines("{lua_allowlist}") do allow[line] = true end
    }}"""
    access = """
            access_by_lua_block {
                ngx.req.read_body()
                local body = ngx.req.get_body_data()
                if not body then return end
                local ok, doc = pcall(cjson.decode, body)
                if ok and type(doc) == "table" and type(doc.instances) == "table" then
                    for _, row in ipairs(doc.instances) do
                        if type(row) == "table" then
                            for k, _ in pairs(row) do
                                if not allow[k] then row[k] = nil end
                            end
                        end
                    end
                    ngx.req.set_body_data(cjson.encode(doc))
                end
            }""" if lua_allowlist else ""
    return f"""{modules}worker_processes 1;
daemon off;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_max_body_size 64m;
    client_body_buffer_size 8m;
    client_body_temp_path {work}/body-{port};
    proxy_temp_path {work}/proxy-{port};{lua}
    upstream leaf {{ server 127.0.0.1:{leaf_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{{access}
            proxy_pass http://leaf;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_conf(port, leaf_port):
    return f"""global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}
    default_backend leaf
backend leaf
    http-reuse always
    server leaf1 127.0.0.1:{leaf_port} maxconn 1024
"""


def envoy_conf(port, leaf_port):
    """Envoy as a plain h2c -> h2c forwarder: no filters but the router, no retries' buffering
    beyond its defaults, no access log."""
    socket_address = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
    return {
        "static_resources": {
            "listeners": [{
                "name": "h2c",
                "address": socket_address(port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "e2e",
                        "codec_type": "HTTP2",
                        "route_config": {"virtual_hosts": [{
                            "name": "leaf", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "leaf", "timeout": "60s"}}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "leaf",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
                "load_assignment": {"cluster_name": "leaf", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": socket_address(leaf_port)}}]}]},
            }],
        },
    }


def trimmer_h2c_conf(port, admin, leaf_port, bundles):
    """The trimmer with one h2c cluster (gRPC needs one) and the workload's bundle."""
    return f"""listen = "127.0.0.1:{port}"
default_cluster = "leaf"
[admin]
listen = "127.0.0.1:{admin}"
[bundles]
dir = "{bundles}"
[[clusters]]
name = "leaf"
endpoints = ["http://127.0.0.1:{leaf_port}"]
protocol = "h2c"
"""


def oha(url, path, body_file, rate, duration, extra_headers):
    cmd = ["taskset", "-c", "0", "oha", "-z", f"{duration}s", "-q", str(rate), "--latency-correction",
           "--no-tui", "--output-format", "json", "-c", "64", "-m", "POST", "-D", body_file,
           "-H", "content-type: application/json"]
    for h in extra_headers:
        cmd += ["-H", h]
    cmd.append(url + path)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    data = json.loads(out.stdout)
    summary = data["summary"]
    pct = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    # Requests still in flight when the duration ends are aborted by oha; they are not errors.
    errors = sum(v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k)
    ok = codes.get("200", 0)
    return {
        "rps": summary.get("requestsPerSec") or 0.0,
        "p50": (pct.get("p50") or 0) * 1000, "p90": (pct.get("p90") or 0) * 1000, "p99": (pct.get("p99") or 0) * 1000,
        "ok": ok, "errors": errors + sum(v for k, v in codes.items() if k != "200"),
    }


def grpc_load(args, port, workload, rate, duration):
    """`trimmer-e2e grpc-load` on CPU 0: fixed rate, open loop, latency from the scheduled send."""
    cmd = ["taskset", "-c", "0", args.e2e, "grpc-load", "--target", f"127.0.0.1:{port}",
           "--workload", workload, "--rate", str(rate), "--duration", str(duration),
           "--connections", str(args.connections)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"grpc-load failed: {out.stderr.strip()}")
    r = json.loads(out.stdout)
    if r["error_samples"]:
        print(f"  port {port}: {r['errors']} errors, e.g. {r['error_samples'][0]}", file=sys.stderr)
    # Not answered within the grace period at a fixed rate: as good as failed.
    r["errors"] += r["unfinished"]
    return r


def leaf_stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.loads(r.read())


def settled_leaf_stats(port):
    """The leaf's tally once requests still in flight when the load ended have been answered
    (an overloaded target's last bodies would otherwise count for the next target)."""
    stats = leaf_stats(port)
    for _ in range(100):
        time.sleep(0.2)
        later = leaf_stats(port)
        if later == stats:
            break
        stats = later
    return stats


def run_workload(args, workload, work):
    wdir = os.path.join(work, workload)
    subprocess.run([args.e2e, "workload", workload, "--dir", wdir], check=True)
    path = open(os.path.join(wdir, "path")).read().strip()
    body_file = os.path.join(wdir, "body")
    leaf_port = free_port()
    leaf = start([args.e2e, "leaf", "--listen", f"127.0.0.1:{leaf_port}", "--workload", workload])
    wait_port(leaf_port)
    targets = [Target("direct", leaf_port, None, lambda: [])]
    procs = [leaf]

    port = free_port()
    admin = free_port()
    p = start([args.trimmer, "serve", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
               "--upstream", f"http://127.0.0.1:{leaf_port}", "--bundles", os.path.join(wdir, "bundles")],
              env={**os.environ, "RUST_LOG": "warn"})
    procs.append(p)
    targets.append(Target("trimmer", port, p, lambda p=p: [p.pid]))
    admins = [admin]

    if args.verify_sample is not None:
        # The same trimmer with shadow verification on a sample of trimmed requests.
        port, admin = free_port(), free_port()
        conf = os.path.join(work, f"{workload}-trimmer-verify.toml")
        open(conf, "w").write(f'''listen = "127.0.0.1:{port}"
default_cluster = "default"
[admin]
listen = "127.0.0.1:{admin}"
[bundles]
dir = "{os.path.join(wdir, 'bundles')}"
[verify]
sample = {args.verify_sample}
[[clusters]]
name = "default"
endpoints = ["http://127.0.0.1:{leaf_port}"]
''')
        p = start([args.trimmer, "serve", "--config", conf], env={**os.environ, "RUST_LOG": "warn"})
        procs.append(p)
        targets.append(Target("trimmer+verify", port, p, lambda p=p: [p.pid]))
        admins.append(admin)
        verify_admin[workload] = admin

    for name, lua in (("nginx", None), ("nginx+lua", os.path.join(wdir, "allowlist.txt"))):
        port = free_port()
        conf = os.path.join(work, f"{workload}-{name}.conf")
        open(conf, "w").write(nginx_conf(work, port, leaf_port, lua))
        p = start(["nginx", "-c", conf, "-e", os.path.join(work, f"nginx-{port}.log")])
        procs.append(p)
        targets.append(Target(name, port, p, lambda p=p: [p.pid] + children(p.pid)))

    port = free_port()
    conf = os.path.join(work, f"{workload}-haproxy.cfg")
    open(conf, "w").write(haproxy_conf(port, leaf_port))
    p = start(["haproxy", "-f", conf, "-db"])
    procs.append(p)
    targets.append(Target("haproxy", port, p, lambda p=p: [p.pid]))
    if args.targets:
        keep = args.targets.split(",")
        targets = [t for t in targets if t.name in keep]
    for t in targets:
        wait_port(t.port)
    for a in admins:
        wait_ready(a)
    time.sleep(0.5)

    headers = []
    rate = args.rate[workload]
    results, checks = fixed_rate_rounds(
        targets, leaf, leaf_port, args.repeats,
        lambda t: oha(f"http://127.0.0.1:{t.port}", path, body_file, rate, args.duration, headers))
    # Maximum sustainable rate: from half the test rate, halve until a rate is sustained (so a
    # slow target still gets a figure), then grow it until the target falls behind. Searched in
    # rounds like the fixed-rate runs (targets interleaved, the median reported), as the host's
    # speed drifts over minutes.
    def max_sustained(t):
        def sustained(r_try):
            settled_leaf_stats(leaf_port)  # the last try's backlog is not this one's
            r = oha(f"http://127.0.0.1:{t.port}", path, body_file, r_try, max(3, args.duration // 2), headers)
            return r["errors"] == 0 and r["rps"] >= 0.95 * r_try and r["p99"] < 250

        best, r_try = 0, max(1, rate // 2)
        while r_try > 1 and not sustained(r_try):
            r_try //= 2
        if r_try > 1 or sustained(r_try):
            best = r_try
            r_try = max(r_try + 1, int(r_try * 1.25))
            while r_try <= args.max_rate[workload] and sustained(r_try):
                best = r_try
                r_try = max(r_try + 1, int(r_try * 1.25))
            # Between the last rate sustained and the first not: halve the gap down to 5 %.
            failed = r_try
            while failed <= args.max_rate[workload] and failed - best > max(1, best // 20):
                middle = (best + failed) // 2
                if sustained(middle):
                    best = middle
                else:
                    failed = middle
        return best

    max_rate = {t.name: [] for t in targets}
    if workload in verify_admin:
        with urllib.request.urlopen(f"http://127.0.0.1:{verify_admin[workload]}/metrics", timeout=5) as r:
            lines = r.read().decode().splitlines()
        verify_totals[workload] = [l for l in lines if l.startswith("trimmer_verify_total") and not l.endswith(" 0")]
    for _ in range(args.max_rate_rounds if args.max_rate_rounds is not None else args.repeats):
        for t in targets:
            max_rate[t.name].append(max_sustained(t))
    stop(procs)
    return targets, results, checks, max_rate, rate


def fixed_rate_rounds(targets, leaf, leaf_port, repeats, load):
    """Fixed rate, targets interleaved, repeated: each target's load results (with the CPU
    seconds its processes and the leaf used per 1,000 answered requests) and what the leaf saw
    from it."""
    results = {t.name: [] for t in targets}
    checks = {}
    for _ in range(repeats):
        for t in targets:
            before_stats = leaf_stats(leaf_port)
            cpu0, leaf_cpu0 = cpu_seconds(t.pids()), cpu_seconds([leaf.pid])
            r = load(t)
            after = settled_leaf_stats(leaf_port)
            cpu, leaf_cpu = cpu_seconds(t.pids()) - cpu0, cpu_seconds([leaf.pid]) - leaf_cpu0
            r["cpu_per_1k"] = 1000 * cpu / max(r["ok"], 1) if t.name != "direct" else float("nan")
            r["leaf_cpu_per_1k"] = 1000 * leaf_cpu / max(r["ok"], 1)
            results[t.name].append(r)
            delta = {k: after[k] - before_stats[k] for k in after}
            checks.setdefault(t.name, {k: 0 for k in delta})
            for k in delta:
                checks[t.name][k] += delta[k]
    return results, checks


def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def run_grpc(args, work):
    """direct, trimmer (h2c cluster) and Envoy (plain h2c forwarding) in interleaved rounds."""
    workload = GRPC_WORKLOAD
    wdir = os.path.join(work, workload)
    subprocess.run([args.e2e, "workload", workload, "--dir", wdir], check=True)
    leaf_port = free_port()
    leaf = start([args.e2e, "leaf", "--listen", f"127.0.0.1:{leaf_port}", "--workload", workload])
    procs = [leaf]
    wait_port(leaf_port)
    targets = [Target("direct", leaf_port, None, lambda: [])]

    port, admin = free_port(), free_port()
    conf = os.path.join(work, "trimmer-h2c.toml")
    open(conf, "w").write(trimmer_h2c_conf(port, admin, leaf_port, os.path.join(wdir, "bundles")))
    p = start([args.trimmer, "serve", "--config", conf], env={**os.environ, "RUST_LOG": "warn"})
    procs.append(p)
    targets.append(Target("trimmer", port, p, lambda p=p: [p.pid]))

    port = free_port()
    conf = os.path.join(work, "envoy.json")
    open(conf, "w").write(json.dumps(envoy_conf(port, leaf_port)))
    p = start(["envoy", "-c", conf, "--concurrency", "1", "--disable-hot-restart", "-l", "warn",
               "--log-path", os.path.join(work, "envoy.log")])
    procs.append(p)
    targets.append(Target("envoy", port, p, lambda p=p: [p.pid]))
    try:
        for t in targets:
            wait_port(t.port)
        wait_ready(admin)
        time.sleep(0.5)
        # Warm-up: connections, pools, the trimmer's allowlist memo; not counted.
        for t in targets:
            grpc_load(args, t.port, workload, args.rate_grpc, 1)
        settled_leaf_stats(leaf_port)
        results, checks = fixed_rate_rounds(
            targets, leaf, leaf_port, args.repeats,
            lambda t: grpc_load(args, t.port, workload, args.rate_grpc, args.duration))
    finally:
        stop(procs)
    return targets, results, checks


def print_table(targets, results, checks, max_rate=None):
    print(f"{'target':<14} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'achieved':>9} "
          + (f"{'max rate':>9} " if max_rate else "") + f"{'CPU s/1k':>9} {'leaf CPU':>9} {'errors':>7}   leaf saw")
    for t in targets:
        rs = results[t.name]
        c = checks[t.name]
        print(f"{t.name:<14} {median([r['p50'] for r in rs]):>8.2f} {median([r['p90'] for r in rs]):>8.2f} "
              f"{median([r['p99'] for r in rs]):>8.2f} {median([r['rps'] for r in rs]):>9.1f} "
              + (f"{median(max_rate[t.name]):>9.0f} " if max_rate else "")
              + f"{median([r['cpu_per_1k'] for r in rs]):>9.3f} {median([r['leaf_cpu_per_1k'] for r in rs]):>9.3f} "
              f"{sum(r['errors'] for r in rs):>7}   "
              f"full {c['full']}, trimmed {c['trimmed']}, wrong {c['wrong']}, unparsable {c['unparsable']}")
    print("per round (p50 ms / p99 ms / CPU s per 1k):\n" + "\n".join(
        f"  {t.name:<14} " + ", ".join(f"{r['p50']:.2f}/{r['p99']:.1f}/{r['cpu_per_1k']:.3f}" for r in results[t.name])
        for t in targets))


# Admin port of the trimmer+verify target per workload, and its trimmer_verify_total lines
# after the fixed-rate runs.
verify_admin = {}
verify_totals = {}


def median(values):
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


GRPC_WORKLOAD = "kserve-grpc-batch"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trimmer", required=True)
    parser.add_argument("--e2e", required=True, help="the trimmer-e2e binary (leaf, workloads, gRPC load)")
    parser.add_argument("--workloads", default="small,tfs-rows")
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate-small", type=int, default=2000)
    parser.add_argument("--rate-tfs-rows", type=int, default=20)
    parser.add_argument("--verify-sample", type=float, default=None,
                        help="add a target 'trimmer+verify': the trimmer with [verify] sample = this")
    parser.add_argument("--targets", default=None,
                        help="only these targets, comma-separated (direct,trimmer,trimmer+verify,nginx,nginx+lua,haproxy)")
    parser.add_argument("--max-rate-rounds", type=int, default=None,
                        help="rounds of the maximum-rate search (default: --repeats; 0 skips it)")
    parser.add_argument("--grpc", action="store_true",
                        help=f"compare direct, trimmer and Envoy over h2c with {GRPC_WORKLOAD} instead")
    parser.add_argument("--rate-grpc", type=int, default=50)
    parser.add_argument("--connections", type=int, default=4, help="h2c connections of the gRPC load")
    args = parser.parse_args()
    args.rate = {"small": args.rate_small, "tfs-rows": args.rate_tfs_rows}
    args.max_rate = {"small": 60000, "tfs-rows": 2000}
    tools = ("envoy", "taskset") if args.grpc else ("oha", "nginx", "haproxy", "taskset")
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run benches/e2e/run.sh, which installs it")
    work = tempfile.mkdtemp(prefix="trimmer-e2e-")
    try:
        if args.grpc:
            targets, results, checks = run_grpc(args, work)
            print(f"\n## {GRPC_WORKLOAD} over h2c: {args.rate_grpc} req/s fixed rate, {args.connections} connections, "
                  f"{args.duration} s x {args.repeats} runs (medians)")
            print_table(targets, results, checks)
            return
        for workload in args.workloads.split(","):
            targets, results, checks, max_rate, rate = run_workload(args, workload, work)
            print(f"\n## {workload}: {rate} req/s fixed rate, {args.duration} s x {args.repeats} runs (medians)")
            print_table(targets, results, checks, max_rate)
            print("max rate per round: " + ", ".join(f"{t.name} {max_rate[t.name]}" for t in targets))
            for line in verify_totals.get(workload, []):
                print(f"trimmer+verify: {line}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
