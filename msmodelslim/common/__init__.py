"""Framework-neutral front doors of the toolkit."""
