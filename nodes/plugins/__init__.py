"""Plugins bundled with graphrun, written only against the public plugin API."""
