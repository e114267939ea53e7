"""The ``bn`` command. Each sub-command lives in its own module and is imported lazily.

    bn train --config experiments/configs/NAME.py [--config.KEY=VALUE ...] --workdir DIR
    bn reproduce [--quick|--full] --out DIR
    bn report DIR
    bn bench [--quick] --out DIR
    bn data list | info NAME | prepare NAME
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    # name: (module, one-line help)
    "train": ("bn.run", "train one experiment config into a workdir"),
    "reproduce": ("bn.ledger", "run the claims ledger and write the report"),
    "report": ("bn.report", "rebuild a report from the JSON files of a reproduce run"),
    "bench": ("bn.bench", "performance suite -> DIR/bench.json, DIR/bench.md"),
    "data": ("bn.data", "list, inspect and prepare datasets"),
}


def usage() -> str:
  lines = ["usage: bn COMMAND [ARGS...]", "", "commands:"]
  lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
  lines += ["", "`bn COMMAND --help` shows a command's options."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"bn: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
    return 2
  module = importlib.import_module(COMMANDS[name][0])
  return int(module.main(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
