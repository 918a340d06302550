"""Charter package."""
