"""``python -m mechscope`` runs the command line."""

from mechscope.cli.entry import main

main()
