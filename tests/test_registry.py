import pytest

from dopd.errors import DopdError
from dopd.registry import Registry


def test_lookup_is_case_insensitive_and_unknown_names_list_known_ones() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("Alpha", 1)

    @registry.decorator("beta")
    def beta() -> int:
        return 2

    assert registry.get("ALPHA") == 1
    assert registry.get(" beta ")() == 2
    assert "alpha" in registry and len(registry) == 2
    with pytest.raises(DopdError, match=r"unknown thing 'gamma' \(known: alpha, beta\)"):
        registry.get("gamma")


def test_double_registration_is_a_bug() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError):
        registry.register("A", 2)
