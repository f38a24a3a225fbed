"""Run the client's model (tests/test_model.py) for as long as asked, a fresh seed each run.

    python benchmarks/model_soak.py --minutes 30

CI runs the same state machine with a small fixed budget; this keeps looking. Each run
is one hypothesis search (``--examples`` examples of up to ``--steps`` steps) with its
own seed. A failure is shrunk by hypothesis, which prints the minimal sequence of steps;
the seed and the ``@reproduce_failure`` blob are printed beside it. The script goes on
to the next run after a failure (``--stop`` ends it there) and exits non-zero if any
run failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep looking")
    parser.add_argument("--examples", type=int, default=20, help="examples per run")
    parser.add_argument("--steps", type=int, default=40, help="most steps per example")
    parser.add_argument("--seed", type=int, default=None, help="the first run's seed")
    parser.add_argument("--log", default=os.devnull,
                        help="where the client's own log goes (default: nowhere)")
    parser.add_argument("--stop", action="store_true", help="stop at the first failure")
    args = parser.parse_args()

    # The client logs every fault it meets, and the model makes many: keep them off the
    # report (a handler on the root logger also keeps logging's last resort quiet).
    logging.basicConfig(filename=args.log, level=logging.WARNING,
                        format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    sys.path.insert(0, str(ROOT))
    # Imported only now, once the log is set up and the checkout is on the path.
    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test

    from tests import test_model


    end = time.monotonic() + args.minutes * 60
    runs = failures = 0
    seed = args.seed
    while time.monotonic() < end:
        seed = seed if seed is not None else random.SystemRandom().getrandbits(64)
        runs += 1
        before = test_model.steps_run
        test_model.failed_traces.clear()
        started = time.monotonic()
        # Hypothesis draws its own seed from the global random generator.
        random.seed(seed)
        try:
            run_state_machine_as_test(
                test_model.ClientModel,
                settings=settings(
                    test_model.MODEL_SETTINGS,
                    max_examples=args.examples,
                    stateful_step_count=args.steps,
                    derandomize=False,
                    print_blob=True,
                ),
            )
            outcome = "passed"
        except Exception:  # noqa: BLE001 - every failure is reported, then the next run
            failures += 1
            outcome = "FAILED"
            print(f"\n=== run {runs} (seed {seed}) failed; the minimal example is above ===",
                  flush=True)
            traceback.print_exc()
            if test_model.failed_traces:
                steps, error = test_model.failed_traces[0]
                print("the first failing example, as it ran:\n    " + "\n    ".join(steps)
                      + f"\n    -> {error}", flush=True)
            print(f"rerun: python benchmarks/model_soak.py --minutes 1 --seed {seed}"
                  f" --examples {args.examples} --steps {args.steps}"
                  " --stop", flush=True)
        print(f"run {runs} seed {seed}: {outcome}, {test_model.steps_run - before} steps in "
              f"{time.monotonic() - started:.1f} s (total {test_model.steps_run} steps, "
              f"{failures} failed runs)", flush=True)
        seed = None
        if failures and args.stop:
            break
    print("what the examples ran into: " + ", ".join(
        f"{name} {n}" for name, n in sorted(test_model.seen.items())), flush=True)
    print(f"{runs} runs, {test_model.steps_run} steps, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
