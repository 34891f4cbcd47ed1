"""``python -m micronet_score.compress``: the ``micronet-compress`` command, also under torchrun
(``torchrun --nproc-per-node 2 -m micronet_score.compress run RECIPE``)."""

from micronet_score.compress.cli import main

if __name__ == "__main__":
    main()
