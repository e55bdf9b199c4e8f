"""Topology, renderers and the local launcher of the AI-SWA platform."""
