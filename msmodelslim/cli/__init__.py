"""The ``msmodelslim`` command line: one module per subcommand."""
