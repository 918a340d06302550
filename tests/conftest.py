"""Suite-wide: this directory is on sys.path, so test modules can `import shared_data`."""
