"""``python -m qexport`` == the ``qexport`` command."""

from qexport.cli import main

main()
