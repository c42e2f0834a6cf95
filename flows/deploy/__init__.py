"""Deployment: what leaves a run for production (``lamflow package``)."""
