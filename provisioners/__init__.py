"""Provisioners: one module per way to create, start, stop and destroy units."""

__all__: list[str] = []
