#!/usr/bin/env bash
# Smoke test of `otas serve --device cuda` on a GPU machine: the shipped model with the H200 profile, 30
# KServe v2 JSON requests of the sample images (each must come back 200 with its id), then three bodies
# the server must refuse before parsing or with a clear 400 (too many values, NaN, an id that is a list).
# Prepare (once): the wheels of scripts/gpu_serve_replay.sh in .carry/whl. Run from the repository root
# on the GPU machine, with .carry/whl carried: bash scripts/gpu_serve_smoke.sh   (output under $OUT)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl 2>&1 | grep -v "already exists" | tail -2
export PYTHONPATH=/tmp/site:$PWD OTAS_CACHE=/tmp/otas-cache
python3 -m otas.cli serve --device cuda --profile profiles/vit_tiny_p2_c5__h200-graphs.json --apps otas/configs/apps-h100.yaml --port 8123 --grpc-port 0 > $OUT/serve.log 2>&1 &
for i in $(seq 120); do curl -sf localhost:8123/v2/health/ready > /dev/null && break; sleep 1; done
python3 - <<'PY' 2>&1 | tee $OUT/smoke.txt
import base64, glob, json, time, urllib.request
def post(path, body, ctype="application/json"):
    req = urllib.request.Request("http://127.0.0.1:8123" + path, data=body, headers={"content-type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read())
model = json.loads(urllib.request.urlopen("http://127.0.0.1:8123/v1/config").read())["model"]
files = sorted(glob.glob("otas/assets/sample/*/*/*"))[:30]
ok, lat, statuses = 0, [], {}
for i, f in enumerate(files):
    app = ["novel", "lowlight", "blur"][i % 3]
    body = {"id": f"r{i}", "parameters": {"app": app}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(open(f, "rb").read()).decode()]}]}
    t = time.perf_counter(); s, r = post(f"/v2/models/{model}/infer", json.dumps(body).encode()); lat.append((time.perf_counter() - t) * 1e3)
    ok += s == 200 and r.get("id") == f"r{i}"
    key = f"{s} {r.get('reason', '')}".strip()
    statuses[key] = statuses.get(key, 0) + 1
print("answered 200 with their id:", ok, "of", len(files), "statuses", statuses, "median ms", sorted(lat)[len(lat) // 2])
head = '{"parameters": {"app": "blur"}, "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": ['
print("too many values:", post(f"/v2/models/{model}/infer", (head + ",".join(["7"] * 900000) + "]}]}").encode()))
print("NaN:", post(f"/v2/models/{model}/infer", (head + "NaN]}]}").encode()))
print("id as a list:", post(f"/v2/models/{model}/infer", json.dumps({"id": [1], "parameters": {"app": "blur"}, "inputs": []}).encode()))
PY
kill %1; sleep 2; grep -c '"level": "ERROR"' $OUT/serve.log; grep '"event": "serve"' $OUT/serve.log | cut -c1-300
