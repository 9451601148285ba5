"""edgetta: keep deployed networks accurate under distribution shift with torch-free test-time adaptation."""

__version__ = "0.1.0"
