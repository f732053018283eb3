"""mambaseg.export."""
