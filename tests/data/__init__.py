"""Stored databases of earlier memable versions, and the code that wrote them."""
