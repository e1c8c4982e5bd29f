"""Mean per-concept scores of an `omnipersona bench` results.json (finished or stopped: the bench
rewrites it after every concept), against the same concepts of an earlier results.json in brackets
(a smaller run is a prefix of the full one, so the items are the same).

Usage: python docs/benchmark/compare_results.py NEW_RESULTS.json OLD_RESULTS.json
"""
import json
import sys

METRICS = ("rec", "vqa", "vqa_visual", "vqa_fact", "gen", "parg", "parg_place", "edit")


def main(new: str, old: str) -> None:
    now, before = json.load(open(new)), json.load(open(old))
    k = now["concepts"]
    print(f"{new}: seed {now['seed']}, {k} of {now['planned']} concepts; in brackets: {old} on the same concepts")
    print("| row | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS))
    for name, scores in now["per_concept"].items():
        then = before["per_concept"][name][:k]
        cells = [f"{sum(c[m] for c in scores) / k:.3f} ({sum(c[m] for c in then) / k:.3f})" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
