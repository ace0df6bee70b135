"""Turn a pytest-benchmark JSON file into the Markdown tables of benchmarks/RESULTS.md.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))
    rows = defaultdict(dict)         # (group, size) -> impl -> (mean_s, extra)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "reference_score" in info:          # the return-parity run: its own line below
            continue
        name = b["name"].split("[")[0].removeprefix("test_")
        size = info.get("batch", info.get("rows", ""))
        if "algo" in info or "case" in info:
            name = f"{name} ({info.get('algo', info.get('case'))})"
        # Per item: an RL benchmark call runs several updates.
        mean = b["stats"]["mean"] / info.get("updates_per_call", 1)
        rows[(name, size)][info.get("impl", "reference")] = (mean, info)
    device = next(iter(data["benchmarks"]))["extra_info"].get("device", "?")
    print(f"Device: {device}; torch {data['benchmarks'][0]['extra_info'].get('torch')}; "
          f"{data['datetime'][:10]}\n")
    # Columns beyond reference / fast / compile, each with its ratio to the reference.
    others = sorted({i for impls in rows.values() for i in impls} - {"reference", "fast",
                                                                      "compile"})
    extra = ("".join(f" {o} | {o}/reference |" for o in others),
             " --- | --- |" * len(others))
    print("| benchmark | size | reference | fast | compile | fast/reference | fast/compile |"
          + extra[0])
    print("| --- | --- | --- | --- | --- | --- | --- |" + extra[1])
    for (name, size), impls in sorted(rows.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        def cell(impl):
            if impl not in impls:
                return "", None
            mean, info = impls[impl]
            if "transitions_per_s" in info:
                return f"{info['transitions_per_s']:,.0f} tr/s", mean
            return f"{mean * 1e3:.2f} ms", mean
        (r, rm), (f, fm), (c, cm) = cell("reference"), cell("fast"), cell("compile")
        speed = lambda a, b: f"{b / a:.2f}x" if a and b else ""
        line = f"| {name} | {size} | {r} | {f} | {c} | {speed(fm, rm)} | {speed(fm, cm)} |"
        for o in others:
            h, hm = cell(o)
            line += f" {h} | {speed(hm, rm)} |"
        print(line)
    for b in data["benchmarks"]:
        if "reference_score" in b["extra_info"]:
            i = b["extra_info"]
            print(f"\nReturn parity ({i['env']}, seed {i['seed']}, data: {i['data_source']}): "
                  f"reference score {i['reference_score']:.1f}, fast {i['fast_score']:.1f} "
                  f"(tolerance {i['score_tolerance']:.1f}); synthetic transitions "
                  f"{i['synthetic_counts']}; worst KS {i['worst_ks']:.4f} (critical "
                  f"{i['ks_critical']:.4f}); behaviour policies: {i.get('policies', '?')}; both "
                  f"smoke pipelines took {b['stats']['mean']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1])
