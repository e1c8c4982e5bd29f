"""Mean per-concept scores over the concepts a (possibly stopped) `omnipersona bench` log has
finished, against the same concepts of an earlier results.json in brackets (a smaller run is a
prefix of the full one, so the items are the same). The log rounds each concept's scores to two
decimals, so a mean here can differ from results.json's in the third (VQA's sevenths).

Usage: python docs/benchmark/compare_prefix.py BENCH.log OLD_RESULTS.json
"""
import json
import re
import sys

METRICS = ("rec", "vqa", "gen", "parg", "edit")
ROW = re.compile(r"([A-Za-z +()]+?): " + ",".join(rf"{m}=([\d.]+)" for m in METRICS))


def main(log: str, old: str) -> None:
    rows: dict[str, list[list[float]]] = {}
    done = 0
    for m in re.finditer(r"concept (\d+)/\d+ \(\d+s\)(.*?)(?=concept \d+/\d+|\Z)", open(log).read(), re.S):
        done = int(m.group(1))
        for r in ROW.finditer(m.group(2)):
            rows.setdefault(r.group(1).strip(), []).append([float(r.group(i + 2)) for i in range(len(METRICS))])
    before = json.load(open(old))["per_concept"]
    print(f"first {done} concepts; in brackets: {old} on the same concepts")
    print("| row | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS))
    for name, scores in rows.items():
        k = len(scores)
        now = [sum(s[i] for s in scores) / k for i in range(len(METRICS))]
        then = [sum(c[m] for c in before[name][:k]) / k for m in METRICS]
        print(f"| {name} | " + " | ".join(f"{a:.3f} ({b:.3f})" for a, b in zip(now, then, strict=True)) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
