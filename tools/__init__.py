"""Command-line tools for people at a terminal: ``ansim decode``, ``ansim demo``, and later
provisioning and flashing. Entry point: ``cli.main``."""
