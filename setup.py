"""Shim for older pip/setuptools on edge images (e.g. JetPack) that still call setup.py.
All metadata lives in pyproject.toml."""

from setuptools import setup

setup()
