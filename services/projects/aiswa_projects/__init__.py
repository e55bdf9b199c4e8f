"""The projects service: projects, members, source archives and analysis runs."""
