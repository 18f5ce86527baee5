import pytest

from loadtest import seeding


@pytest.fixture(autouse=True)
def tokens_path(tmp_path, monkeypatch):
    """Each test seeds with its own tokens file: never the development one, nor a parallel run's."""
    path = tmp_path / "tokens.json"
    monkeypatch.setattr(seeding, "TOKENS_PATH", path)
    return path
