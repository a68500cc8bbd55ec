"""Reference judge for `rampart bench decisions --savvi PYTHON`: savvi's multinomial
anytime-valid test (Lindon et al., KDD 2022) on the same simulated streams.

Reads JSON lines from the file named by argv[1], one trial per line: a list of
[canary_errors, stable_errors] per second. argv[2] is alpha, argv[3] the canary's
traffic share. Prints one JSON list: for each trial, the second of the rollback
decision, or null. A rejection counts as a rollback only when the canary holds more
than its share of the errors (savvi's test is two-sided).
"""

import json
import sys

import numpy as np
from savvi.multinomial import Multinomial


def main():
    path, alpha, share = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    theta_0 = np.array([share, 1.0 - share])
    out = []
    with open(path) as f:
        for line in f:
            test = Multinomial(alpha, theta_0)
            decided = None
            for t, (canary, stable) in enumerate(json.loads(line)):
                if canary + stable == 0:
                    continue
                test.update(np.array([canary, stable]))
                if test.odds >= 1.0 / alpha and test.counts[0] > share * test.counts.sum():
                    decided = t + 1
                    break
            out.append(decided)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
