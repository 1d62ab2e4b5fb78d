"""Data only: the manifest, the observed inventory and the plan.

Submodules are imported directly (``from reconciler.models import observed``)
so that commands which validate nothing never build pydantic models.
"""
