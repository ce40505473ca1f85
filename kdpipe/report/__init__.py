"""Reports of plain result records: Markdown and JSON tables, the versioned bench schema, plots."""
