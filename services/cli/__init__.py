"""The `mesh` command: run the mesh (`up`, `worker`, `http`, `smtp`), talk to it (`call`, `state`,
`ls`, `tail`, `history`, `send`, `schedule`, `dead-letters`, `approvals`, `approve`, `reject`,
`clear-memory`) and measure it (`bench`).

parser.py    the arguments of every subcommand
main.py      `main()`: settings from the environment and the flags, then the subcommand
serve.py     the long-running subcommands, which compose processes out of the library and services
commands.py  the subcommands that connect, ask or tell, print and exit
"""

from services.cli.main import main
from services.cli.parser import build_parser

__all__ = ["build_parser", "main"]
