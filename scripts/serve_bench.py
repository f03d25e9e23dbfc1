"""Measurements of `glassbox serve-model` against a real server on loopback (issue #15),
run by scripts/bench-serve, scripts/bench-serve-monitor and scripts/load-test-serve-model.

usage: python scripts/serve_bench.py throughput BIN ROUNDS   (CONCURRENCY="1 4 16")
       python scripts/serve_bench.py monitor BIN ROUNDS
       python scripts/serve_bench.py load BIN CLIENTS REQUESTS
"""
import concurrent.futures, json, os, statistics, subprocess, sys, tempfile, time, urllib.request

HF_PY = os.path.expanduser(os.environ.get("GLASSBOX_BASELINE_VENV", "~/.cache/glassbox-baseline/venv")) + "/bin/python"
GGUF = os.path.expanduser("~/.cache/glassbox/models/SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPTS = ["Once upon a time", "The history of the city", "In a small village", "The best way to learn"]


class Server:
    """`glassbox serve-model --model default` on a free loopback port."""

    def __init__(self, bin_, *args):
        self.p = subprocess.Popen([bin_, "serve-model", "--model", "default", "--port", "0", *map(str, args)],
                                  stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if " at " not in line:
            sys.exit(f"serve-model did not start: {line!r}")
        self.base = line.split(" at ")[1].split(" ")[0]

    def post(self, path, body):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def completion(self, i, max_tokens=64):
        """One seeded completion of exactly `max_tokens` (ignore_eos, as HF's
        min_new_tokens); returns the number of tokens generated."""
        body = {"model": "default", "prompt": PROMPTS[i % 4] + f" ({i})", "max_tokens": max_tokens,
                "temperature": 0.8, "seed": i, "ignore_eos": True}
        return self.post("/completions", body)["usage"]["completion_tokens"]

    def peak_rss_mib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def close(self):
        self.p.terminate()
        self.p.wait(timeout=30)


def aggregate(server, c, together=True):
    """Tokens/s of C completions, sent at once or one by one."""
    t0 = time.time()
    if together:
        with concurrent.futures.ThreadPoolExecutor(c) as ex:
            n = sum(ex.map(server.completion, range(c)))
    else:
        n = sum(server.completion(i) for i in range(c))
    return n / (time.time() - t0)


def hf(c):
    """HF transformers' generate at batch C (the baseline venv), or None without it."""
    if not os.path.exists(HF_PY):
        return None
    out = subprocess.run([HF_PY, "scripts/hf-generate.py", GGUF, str(c), "64", "2", "1"],
                         capture_output=True, text=True).stdout
    return float(out.split(": ")[1].split(" ")[0])


def fmt(xs):
    return f"{', '.join(f'{x:.1f}' for x in xs)} (median {statistics.median(xs):.1f})"


def throughput(bin_, rounds):
    s = Server(bin_, "--max-batch", 16)
    try:
        s.completion(0)  # warm-up
        print(f"binary {bin_}; aggregate tokens/s, {rounds} rounds")
        for c in map(int, os.environ.get("CONCURRENCY", "1 4 16").split()):
            rows = [(aggregate(s, c), aggregate(s, c, False) if c > 1 else None, hf(c)) for _ in range(rounds)]
            b = [r[0] for r in rows]
            one = [r[1] for r in rows if r[1]]
            hs = [r[2] for r in rows if r[2]]
            line = f"concurrency {c:2}: batched {fmt(b)}"
            if hs:
                line += f"; HF generate {fmt(hs)}; glassbox/HF {statistics.median(b) / statistics.median(hs):.2f}"
            if one:
                line += f"; one by one {fmt(one)}; ratio {statistics.median(b) / statistics.median(one):.2f}"
            print(line, flush=True)
    finally:
        s.close()


def monitor(bin_, rounds):
    """Throughput with and without one truth-probe monitor reading every token, the two
    servers alternating round by round."""
    work = tempfile.mkdtemp(prefix="glassbox-monitor-bench-")
    probe = os.path.join(work, "numbers")
    subprocess.run([bin_, "probe", "train", "--model", "default", "--data", "builtin:numbers", "--layer", "3",
                    "--out", probe], check=True, capture_output=True)
    policy = os.path.join(work, "policy.toml")
    with open(policy, "w") as f:
        f.write(f'[[monitor]]\nname = "truth"\nprobe = "{probe}"\nthreshold = 0.5\naction = "annotate"\n')
    plain, watched = Server(bin_, "--max-batch", 16), Server(bin_, "--max-batch", 16, "--policy", policy)
    try:
        for s in (plain, watched):
            s.completion(0)
        # the monitor really reads: every token carries its score
        g = watched.post("/completions", {"model": "default", "prompt": "3 is larger than 90.", "max_tokens": 4,
                                          "temperature": 0})["glassbox"]
        assert len(g["monitors"][0]["scores"]) == 4, g
        print(f"binary {bin_}; aggregate tokens/s without and with one probe monitor (annotate), {rounds} rounds")
        for c in (1, 16):
            without, with_ = [], []
            for _ in range(rounds):
                without.append(aggregate(plain, c))
                with_.append(aggregate(watched, c))
            cost = 1 - statistics.median(with_) / statistics.median(without)
            print(f"concurrency {c:2}: without {fmt(without)}; with {fmt(with_)}; cost {100 * cost:.1f} %",
                  flush=True)
    finally:
        plain.close()
        watched.close()


def load(bin_, clients, requests):
    """CLIENTS threads each sending REQUESTS requests back to back (chat and completions,
    streamed and not, 16 tokens each): every status, p50/p99 latency, peak RSS."""
    s = Server(bin_, "--max-batch", 16, "--queue", max(64, clients))
    statuses, latencies = {}, []

    def client(k):
        for r in range(requests):
            i = k * requests + r
            stream = i % 3 == 0
            if i % 2:
                path, body = "/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[i % 4]}]}
            else:
                path, body = "/completions", {"prompt": PROMPTS[i % 4] + f" ({i})"}
            body.update(model="default", max_tokens=16, temperature=0.8, seed=i, stream=stream)
            req = urllib.request.Request(s.base + path, data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
            t0 = time.time()
            try:
                with urllib.request.urlopen(req, timeout=600) as resp:
                    text = resp.read().decode()
                    ok = text.rstrip().endswith("data: [DONE]") if stream else "choices" in json.loads(text)
                    code = resp.status if ok else "truncated"
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError as e:
                code = type(e).__name__
            latencies.append(time.time() - t0)
            statuses[code] = statuses.get(code, 0) + 1

    try:
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(clients) as ex:
            list(ex.map(client, range(clients)))
        wall = time.time() - t0
        q = statistics.quantiles(latencies, n=100)
        print(f"binary {bin_}; {clients} clients x {requests} requests (16 tokens, a third streamed, half chat): "
              f"{len(latencies)} requests in {wall:.1f} s ({len(latencies) / wall:.2f} req/s); statuses {statuses}; "
              f"latency p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {max(latencies):.2f} s; "
              f"server peak RSS {s.peak_rss_mib():.0f} MiB")
        if set(statuses) != {200}:
            sys.exit("FAILED: not every request succeeded")
    finally:
        s.close()


if __name__ == "__main__":
    mode, bin_ = sys.argv[1], sys.argv[2]
    if mode == "throughput":
        throughput(bin_, int(sys.argv[3]))
    elif mode == "monitor":
        monitor(bin_, int(sys.argv[3]))
    elif mode == "load":
        load(bin_, int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
