"""The `aiswa` command-line client of the AI-SWA gateway API."""
