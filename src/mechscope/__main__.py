"""``python -m mechscope`` runs the command line."""

from mechscope.cli.main import main

main()
