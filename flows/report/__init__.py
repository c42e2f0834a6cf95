"""What a run shows: ``report.json`` and its plots, the terminal table and progress, the HTML page."""
