"""bae's command line: a Typer app whose commands import DSPy only when they need it."""
