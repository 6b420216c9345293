"""The projects, discovered: every folder ``projects/<name>/`` that is a package is a project, so adding a project
means adding a folder. Nothing here imports a project's code until asked for one of its modules."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def project_dirs() -> dict[str, Path]:
    """``{name: folder}`` of every project package, sorted by name."""
    spec = importlib.util.find_spec("projects")
    roots = list(spec.submodule_search_locations or []) if spec else []
    found = {}
    for root in roots:
        for d in sorted(Path(root).iterdir()):
            if d.is_dir() and not d.name.startswith(("_", ".")) and (d / "__init__.py").exists():
                found.setdefault(d.name, d)
    return dict(sorted(found.items()))


def project_modules(module: str) -> dict[str, str]:
    """``{project name: "projects.<name>.<module>"}`` for the projects that have ``<module>.py``."""
    return {name: f"projects.{name}.{module}" for name, d in project_dirs().items() if (d / f"{module}.py").exists()}


def cli_name(project: str) -> str:
    """A project's sub-command name: its folder name with dashes (cone_geometry -> cone-geometry)."""
    return project.replace("_", "-")


def project_names() -> list[str]:
    """The project folders, by name."""
    return list(project_dirs())
