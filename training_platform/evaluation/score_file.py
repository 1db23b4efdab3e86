"""Score samples with an uploaded reward file: `python -m training_platform.evaluation.score_file
FILE`, one JSON sample per line on stdin ({"output", "reference", "prompt", "labels"}), one
{"score": float} per line on stdout, in order.

The file's compute_score is called as verl calls it (data_source "evaluation", the output as
solution_str, the reference as ground_truth, extra_info {"prompt", "labels"}). This is the only
place a user's scorer file runs: a process of its own, started on a worker
(training_platform.evaluation.deferred), never in the API.

Exit status: 0 when every sample was scored; 1 with one line on stderr naming the sample that
failed (or 2 when the file cannot be loaded).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Sequence

EXIT_FAILED = 1
EXIT_BAD_FILE = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m training_platform.evaluation.score_file FILE", file=sys.stderr)
        return EXIT_BAD_FILE
    try:
        spec = importlib.util.spec_from_file_location("tp_user_scorer", args[0])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {args[0]}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        function = module.compute_score
    except Exception as error:  # the user's file: anything can fail at import
        print(f"the reward file does not load: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BAD_FILE
    for number, line in enumerate(sys.stdin, start=1):
        try:
            sample = json.loads(line)
            value = float(
                function(
                    data_source="evaluation",
                    solution_str=sample["output"],
                    ground_truth=sample["reference"],
                    extra_info={"prompt": sample["prompt"], "labels": sample["labels"]},
                )
            )
            if not math.isfinite(value):
                raise ValueError(f"compute_score gave {value}")
        except Exception as error:
            print(f"sample {number - 1}: {type(error).__name__}: {error}", file=sys.stderr)
            return EXIT_FAILED
        sys.stdout.write(json.dumps({"score": value}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
