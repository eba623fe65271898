"""Scrapes a Prometheus endpoint and parses it with the official Python
client's parser (prometheus_client), as a Prometheus server would.

Usage: python3 scrape.py URL
Prints one JSON object: {"samples": [[name, {labels}, value], ...],
"types": {family: type}}; exits non-zero (with the reason on stderr) when the
body does not parse or the response is not a 200 in the text format.
"""
import json
import signal
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

signal.alarm(10)
url = sys.argv[1]
with urllib.request.urlopen(url, timeout=5) as response:
    if response.status != 200:
        sys.exit(f"FAIL status {response.status}")
    content_type = response.headers.get("Content-Type", "")
    if not content_type.startswith("text/plain; version=0.0.4"):
        sys.exit(f"FAIL content type {content_type!r}")
    body = response.read().decode("utf-8")

samples, types = [], {}
for family in text_string_to_metric_families(body):
    types[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps({"samples": samples, "types": types}))
