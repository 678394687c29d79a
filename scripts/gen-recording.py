#!/usr/bin/env python3
"""Writes a dry-run recording: N messages from 1,000 devices (pumps, fans, pressure
transmitters, gateways) in the topic form, one every millisecond, with overloads, heat, vibration
and offline spells that trip the example rules. Usage: gen-recording.py N OUT"""
import json, random, sys

n, out = int(sys.argv[1]), sys.argv[2]
random.seed(7)
t0 = 1_710_000_000_000
kinds = ["pump", "fan", "pressure", "gateway"]
with open(out, "w") as f:
    for i in range(n):
        d = i % 1000
        kind = kinds[d % 4]
        dev = f"{kind}-{d}"
        ts = t0 + i
        site = f"s{d % 7}"
        if kind == "pump":
            over = (i // 50_000 + d) % 9 == 0
            p = {"current": round(random.gauss(13.2 if over else 9.0, 0.4), 2), "temperature": round(random.gauss(70, 6), 1)}
        elif kind == "fan":
            p = {"rms": round(abs(random.gauss(3.5, 1.2)), 2)}
        elif kind == "pressure":
            p = {"pressure": round(4.2 + random.gauss(0, 0.04), 3)}
        else:
            topic = f"site/{site}/device/{dev}/status"
            f.write(json.dumps({"topic": topic, "ts": ts, "payload": {"status": "offline" if (i // 200_000 + d) % 5 == 0 else "online"}}) + "\n")
            continue
        f.write(json.dumps({"topic": f"site/{site}/device/{dev}/telemetry", "ts": ts, "payload": p}) + "\n")
