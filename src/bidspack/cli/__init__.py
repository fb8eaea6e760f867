"""The command-line interface: one thin click module per verb."""
