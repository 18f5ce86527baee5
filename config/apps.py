from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project itself as an app: its system checks."""

    name = "config"
    verbose_name = "Project"

    def ready(self) -> None:
        from config import checks  # noqa: F401  (registers the checks)
