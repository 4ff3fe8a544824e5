"""Diagnostics of trained runs, one installed command: `fastrsm-diagnose COMMAND RUN... [options]`.

    policy-spread   how spread out a trained policy's actions are, and how its critic varies across states/actions
    episode-stats   what a policy does in an episode: return, length, distance, speed, how it ends
    action-gap      along an episode, how much better an action the critic knows than the one the policy takes

Each takes run directories (a `--seeds` group or one run), `--checkpoint best|latest`, `--seed` and `--json FILE`;
`fastrsm-diagnose COMMAND --help` says the rest. They read a run; they write nothing into it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {"policy-spread": "policy_spread", "episode-stats": "episode_stats", "action-gap": "action_gap"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"fastrsm-diagnose: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f".{COMMANDS[argv[0]]}", __name__).main(argv[1:])
