"""Turn the printed tables of a GPU session's logs into the result schema of
benchmarks/README.md ("Result files"), for runs whose JSON did not come back (a lease that ended first).

    python benchmarks/log_to_json.py bench LOG --commit SHA --date YYYY-MM-DD --cudnn N -o OUT.json
    python benchmarks/log_to_json.py crossover LOG --commit SHA ... -o OUT.json

`bench` reads the table of `python -m tlstm bench` (median and min per implementation; the
log has no max, so ms_max is null); `crossover` reads the table of
benchmarks/peephole_recurrence_crossover.py (now recurrence_crossover.py), whose fused rows carry the recurrence
("stepwise" or "persistent") that was forced. Every number comes from the log unchanged.
"""
import argparse
import json
import re

BENCH_ROW = re.compile(
    r"^(?P<cell>peephole|tensorized) T=(?P<T>\d+) B=(?P<B>\d+) I=(?P<I>\d+) H=(?P<H>\d+)"
    r"(?: layers=(?P<layers>\d+))?(?: L=(?P<L>\d+) K=(?P<K>\d+))? (?P<dtype>\w+)(?P<tf32> tf32)?"
    r"\s+(?P<direction>fwdbwd|fwd)\s+(?P<impl>\S+)\s+(?P<median>[\d.]+)\s+(?P<min>[\d.]+)")
CROSSOVER_ROW = re.compile(
    r"^(?P<dtype>float32|bfloat16|float16)\s+(?P<H>\d+)\s+(?P<B>\d+)\s+(?P<direction>fwdbwd|fwd)"
    r"\s+(?P<stepwise>[\d.]+)\s+(?P<persistent>[\d.]+|-)\s+(?P<cudnn>[\d.]+)")


def record(cell, impl, direction, dtype, T, B, I, H, median, *, layers=1, L=None, K=None,
           ms_min=None, repeats):
    return {"cell": cell, "impl": impl, "direction": direction, "dtype": dtype, "T": T, "B": B,
            "I": I, "H": H, "layers": layers, "L": L, "K": K, "ms_median": median,
            "ms_min": ms_min, "ms_max": None, "repeats": repeats}


def parse_bench(lines, repeats):
    records, tf32 = [], False
    for line in lines:
        m = BENCH_ROW.match(line)
        if not m:
            continue
        g = m.groupdict()
        L = int(g["L"]) if g["L"] else None
        K = int(g["K"]) if g["K"] else None
        cell, layers = g["cell"], int(g["layers"] or 1)
        if cell == "tensorized" and g["impl"] in ("cudnn", "nn.LSTM"):
            cell, layers, L, K = "lstm", L, None, None  # the stacked LSTM: layers is L
        rec = record(cell, g["impl"], g["direction"], g["dtype"], int(g["T"]), int(g["B"]),
                     int(g["I"]), int(g["H"]), float(g["median"]), layers=layers, L=L, K=K,
                     ms_min=float(g["min"]), repeats=repeats)
        if g["tf32"]:
            rec["tf32"] = tf32 = True
        records.append(rec)
    return records, tf32


def parse_crossover(lines, repeats):
    T = next(int(m.group(1)) for line in lines if (m := re.match(r"^T=(\d+)", line)))
    records = []
    for line in lines:
        m = CROSSOVER_ROW.match(line)
        if not m:
            continue
        g = m.groupdict()
        H, B = int(g["H"]), int(g["B"])
        shape = (g["direction"], g["dtype"], T, B, H, H)
        for recurrence in ("stepwise", "persistent"):
            if g[recurrence] != "-":
                rec = record("peephole", "fused", *shape, float(g[recurrence]), repeats=repeats)
                rec["recurrence"] = recurrence
                records.append(rec)
        records.append(record("peephole", "cudnn", *shape, float(g["cudnn"]), repeats=repeats))
    return records, False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bench", "crossover"])
    parser.add_argument("log")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--commit", required=True, help="the commit the logged run measured")
    parser.add_argument("--date", required=True)
    parser.add_argument("--device", default="NVIDIA H100 80GB HBM3")
    parser.add_argument("--torch", default="2.11.0+cu130")
    parser.add_argument("--cuda", default="13.0")
    parser.add_argument("--cudnn", default="91900")
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--note", default="", help="what a reader must know about this run")
    args = parser.parse_args()
    with open(args.log) as f:
        lines = f.read().splitlines()
    parse = parse_bench if args.kind == "bench" else parse_crossover
    records, tf32 = parse(lines, args.repeats)
    if not records:
        raise SystemExit(f"no table rows found in {args.log}")
    result = {"device": args.device, "torch": args.torch, "cuda": args.cuda, "cudnn": args.cudnn,
              "commit": args.commit, "date": args.date, "tf32": tf32,
              "source": f"{args.kind} table of the log {args.log.rsplit('/', 1)[-1]}",
              "note": args.note, "records": records}
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {len(records)} records to {args.output}")


if __name__ == "__main__":
    main()
