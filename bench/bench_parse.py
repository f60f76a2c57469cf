"""Parse time of the seed's second answer: our ast interpreter vs exec() with a stub Canvas.

exec() of the model's answer is the reference Omost behaviour and the unsafe baseline; it runs
here only on the trusted seed fixture, to measure what safety costs. Prints ratios measured in
one run (this machine is shared and noisy; absolute times mean little).

    python bench/bench_parse.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omost_engine.canvas_code import IncrementalParser, find_code, parse
from tests.seed import seed_answers


class StubCanvas:
    """What the reference code exec()s against, minus the processing: it only records the calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def set_global_description(self, **kwargs: object) -> None:
        self.calls.append(kwargs)

    def add_local_description(self, **kwargs: object) -> None:
        self.calls.append(kwargs)


def unsafe_exec(text: str) -> object:
    code = find_code(text).code
    scope: dict[str, object] = {"Canvas": StubCanvas}
    exec(code, scope)  # the unsafe baseline, on a trusted fixture only
    return scope["canvas"]


def incremental(text: str) -> object:
    parser = IncrementalParser()
    for i in range(0, len(text), 4):  # about one token per feed
        parser.feed(text[i : i + 4])
    return parser.finish()


def timed(fn, text: str, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    text = seed_answers()[1]
    for fn in (parse, unsafe_exec, incremental):
        fn(text)  # warm up
    # interleave rounds so machine noise hits all three alike
    results: dict[str, list[float]] = {"parse": [], "exec": [], "incremental": []}
    for _ in range(5):
        results["parse"] += timed(parse, text, args.repeat // 5)
        results["exec"] += timed(unsafe_exec, text, args.repeat // 5)
        results["incremental"] += timed(incremental, text, args.repeat // 5)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"seed answer 2: {len(text):,} chars, 6 regions, {args.repeat} runs each (medians)")
    print(f"safe parse / exec with stub Canvas      = {med['parse'] / med['exec']:.2f}x")
    print(f"incremental (4-char feeds) / exec       = {med['incremental'] / med['exec']:.2f}x")
    print(f"incremental / one-shot safe parse       = {med['incremental'] / med['parse']:.2f}x")
    print(
        f"(absolute, noisy: parse {med['parse'] * 1e3:.2f} ms, exec {med['exec'] * 1e3:.2f} ms, "
        f"incremental {med['incremental'] * 1e3:.2f} ms)"
    )


if __name__ == "__main__":
    main()
