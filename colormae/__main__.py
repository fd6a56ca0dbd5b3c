"""``python -m colormae <command> ...`` (and ``torchrun -m colormae <command> ...``)."""
from .cli import main

main()
