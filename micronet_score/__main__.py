"""`python -m micronet_score` behaves like the `micronet-score` command."""

from micronet_score.cli import main

main()
