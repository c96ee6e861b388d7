"""``python -m habitus._cli``: the ``habitus`` command."""

from habitus._cli import main

main()
